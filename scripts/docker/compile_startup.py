"""Ship bytecode for what a start imports, in place of its source (run in the image builder).

With a read-only root filesystem Python cannot cache bytecode, so every start would compile the
~2,400 modules the server imports before it could answer. This script goes through a start the
way a pod does (the app's modules, the HTTP server, the demo model loaded and smoke-tested, then
MLflow's scoring machinery the server warms up once ready); then, for every module of the
virtualenv that it imported, it writes the compiled module next to its source (`x.pyc`, the
layout Python loads without a source) and deletes `x.py`.
Sources cost about what their bytecode does, so the image grows by ~6 MB instead of ~50 MB;
the price is that tracebacks through those modules show file and line but not the line's text.
Modules a start does not import (boto for S3, the training code...) keep their source and
compile on first use.

    python compile_startup.py VENV MODEL_DIR
"""

from __future__ import annotations

import os
import py_compile
import sys
import tempfile
from pathlib import Path


def imported_modules(venv: Path, model_dir: Path) -> list[Path]:
    os.environ["MODEL_URI"] = str(model_dir)
    import ml_service.__main__
    import ml_service.serving.app
    import ml_service.serving.server  # noqa: F401
    import uvicorn.lifespan.on
    import uvicorn.protocols.http.httptools_impl  # noqa: F401
    from ml_service.serving.model import fetch_and_deserialize, smoke_test
    from ml_service.serving.settings import Settings

    model = fetch_and_deserialize(Settings(), Path(tempfile.mkdtemp()))
    smoke_test(model)
    model.mlflow_schemas  # noqa: B018 - the warm-up a start runs right after it is ready
    prefix = str(venv.resolve()) + os.sep
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    return sorted(Path(f) for f in files if f and f.startswith(prefix) and f.endswith(".py"))


def main(venv: str, model_dir: str) -> int:
    modules = imported_modules(Path(venv), Path(model_dir))
    before = sum(p.stat().st_size for p in modules)
    after = 0
    for source in modules:
        compiled = source.with_suffix(".pyc")
        py_compile.compile(str(source), cfile=str(compiled), doraise=True)
        after += compiled.stat().st_size
        source.unlink()
    sizes = f"{before / 1e6:.1f} MB of source -> {after / 1e6:.1f} MB of bytecode"
    print(f"{len(modules)} modules: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
