// Grafana's own dashboard types (npm @grafana/schema), made JSON-shaped: a string enum accepts its
// literal values (JSON has no enums), everything else stays as strict as Grafana declares it.
import type { Dashboard, Panel, RowPanel } from "@grafana/schema";
import type * as BarGauge from "@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen";
import type * as Stat from "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen";
import type * as Table from "@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen";
import type * as TimeSeries from "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen";

export type Json<T> = T extends string
  ? string extends T
    ? string
    : `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends Array<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

export type JsonDashboard = Json<Dashboard>;

// A panel of a given plugin: the generic panel plus that plugin's own options and custom field config.
type PluginPanel<Type extends string, Options, Custom> = Omit<Json<Panel>, "type" | "options" | "fieldConfig"> & {
  type: Type;
  options?: Json<Options>;
  fieldConfig?: {
    defaults: Omit<Json<NonNullable<Panel["fieldConfig"]>["defaults"]>, "custom"> & { custom?: Json<Custom> };
    overrides: Json<NonNullable<Panel["fieldConfig"]>["overrides"]>;
  };
};

export type TimeSeriesPanel = PluginPanel<"timeseries", TimeSeries.Options, TimeSeries.FieldConfig>;
export type StatPanel = PluginPanel<"stat", Stat.Options, Record<string, never>>;
export type TablePanel = PluginPanel<"table", Table.Options, Table.FieldConfig>;
export type BarGaugePanel = PluginPanel<"bargauge", BarGauge.Options, Record<string, never>>;
export type JsonRowPanel = Omit<Json<RowPanel>, "panels"> & { panels: Array<KnownPanel> };
export type KnownPanel = TimeSeriesPanel | StatPanel | TablePanel | BarGaugePanel;
