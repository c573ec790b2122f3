// Parses PromQL with Prometheus's own Lezer grammar (the one its UI uses) and prints, per expression,
// the syntax errors and the metric names it selects. stdin: JSON array of strings; stdout: JSON array.
const { parser } = require("@prometheus-io/lezer-promql");

const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = input.map((expr) => {
  const tree = parser.parse(expr);
  const errors = [];
  const metrics = new Set();
  tree.iterate({
    enter(node) {
      if (node.type.isError) {
        errors.push(node.from);
      } else if (node.name === "VectorSelector") {
        const ident = node.node.getChild("Identifier");
        if (ident) metrics.add(expr.slice(ident.from, ident.to));
        // {__name__="x"} selects a metric too.
        const matchers = node.node.getChild("LabelMatchers");
        if (matchers) {
          for (const m of matchers.getChildren("UnquotedLabelMatcher")) {
            const name = m.getChild("LabelName");
            const value = m.getChild("StringLiteral");
            if (name && value && expr.slice(name.from, name.to) === "__name__") {
              metrics.add(JSON.parse(expr.slice(value.from, value.to).replace(/^'|'$/g, '"')));
            }
          }
        }
      }
    },
  });
  return { expr, errors, metrics: [...metrics].sort() };
});
process.stdout.write(JSON.stringify(out));
