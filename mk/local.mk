# Local flow: a tracking server on this machine, training into it, serving from it.
# Data (sqlite + artifacts) lives in .local/mlflow/ (git-ignored).
MLFLOW_PORT ?= 5000
PORT ?= 8000
MLFLOW_LOCAL_URI := http://127.0.0.1:$(MLFLOW_PORT)
TRAIN_ARGS ?=
LOCAL_ENV := MLFLOW_PORT=$(MLFLOW_PORT) VENV_BIN=$(BIN) MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true

.PHONY: mlflow mlflow-stop train serve run

mlflow: venv ## start the local MLflow server on 127.0.0.1:$(MLFLOW_PORT) in the background (data in .local/mlflow)
	@$(LOCAL_ENV) scripts/local-mlflow.sh start >/dev/null
	@echo "MLflow tracking server: $(MLFLOW_LOCAL_URI)  (stop: make mlflow-stop)"

mlflow-stop: ## stop the local MLflow server started by make mlflow/train
	@$(LOCAL_ENV) scripts/local-mlflow.sh stop

train: mlflow ## train, register a new version of ml-service (TRAIN_ARGS="--alias champion --seed 42 ...")
	$(LOCAL_ENV) MLFLOW_TRACKING_URI=$(MLFLOW_LOCAL_URI) $(BIN)/python -m ml_service.training $(TRAIN_ARGS)

serve: venv ## serve models:/ml-service@champion from the local MLflow server on 127.0.0.1:$(PORT)
	MLFLOW_TRACKING_URI=$(MLFLOW_LOCAL_URI) MODEL_URI=$${MODEL_URI:-models:/ml-service@champion} \
	  PORT=$(PORT) $(BIN)/python -m ml_service

run: venv ## MLflow server + train (alias champion) + serve on 127.0.0.1:$(PORT); Ctrl-C stops it all
	@$(LOCAL_ENV) PORT=$(PORT) scripts/local-run.sh
