#!/usr/bin/env bash
# mypy on the packages as they are installed. The editable install maps the folders study/,
# workers/ and dashboards/ to proxstudy.study, ... with an import hook that mypy cannot follow,
# so mypy reads them through a tree of links laid out like the installed packages:
#   build/typecheck/proxstudy/{__init__.py,errors.py,files.py} -> proxstudy/*.py
#   build/typecheck/proxstudy/{study,workers,dashboards}      -> study/, workers/, dashboards/
#   build/typecheck/proxprop                                  -> proxprop/
# (build/ is git-ignored). Settings: [tool.mypy] in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TREE=build/typecheck
rm -rf "$TREE"
mkdir -p "$TREE/proxstudy"
for file in proxstudy/*.py; do
    ln -s "$ROOT/$file" "$TREE/$file"
done
for folder in study workers dashboards; do
    ln -s "$ROOT/$folder" "$TREE/proxstudy/$folder"
done
ln -s "$ROOT/proxprop" "$TREE/proxprop"
cd "$TREE"
MYPYPATH=. exec "$ROOT/.venv/bin/python" -m mypy --config-file "$ROOT/pyproject.toml" -p proxstudy -p proxprop "$@"
