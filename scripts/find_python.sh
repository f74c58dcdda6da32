#!/usr/bin/env bash
# Print the path of a working python<VERSION> (e.g. 3.12), or nothing.
#   bash scripts/find_python.sh 3.12
# A pyenv shim called python3.12 exists on machines where 3.12 is installed but not selected, and
# fails when run; pyenv's own install folder has the interpreter itself.
version="$1"
candidates=("python$version")
if command -v pyenv >/dev/null 2>&1; then
    for dir in "$(pyenv root)/versions/$version"*/; do
        candidates+=("${dir}bin/python$version")
    done
fi
for exe in "${candidates[@]}"; do
    if "$exe" -c 'import sys' >/dev/null 2>&1; then
        command -v "$exe"
        exit 0
    fi
done
exit 0
