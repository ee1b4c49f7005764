#!/usr/bin/env bash
# Configures the offline Bazel build (Debian's bazel-bootstrap 4.2.3, no
# network). Run from anywhere, then:
#
#   ./configure.sh && bazel build //... && bazel test //...
#
# Writes (all git-ignored, safe to rerun):
#   third_party/local_config_tf/  the @local_config_tf repository: symlinks to
#       the TensorFlow headers and libtensorflow_framework.so.2 of $PYTHON,
#       its BUILD (from third_party/tf/local_config_tf.BUILD) and
#       build_defs.bzl (TensorFlow's compile flags, the -march flag, the
#       nvcc path and flags). The sources and our own flags are in
#       kernels/sources.bzl, shared with setup.py.
#   .bazelrc.user  absolute paths: --override_repository for rules_cc,
#       rules_java and remote_coverage_tools (so that Bazel downloads
#       nothing), and --output_user_root.
#
# Environment:
#   PYTHON_BIN_PATH       Python whose TensorFlow to build against (python3).
#   SPARSE_OPS_MARCH      -march= for our sources, as setup.py's default:
#                         DEFAULT_MARCH of kernels/sources.bzl (x86-64:
#                         any x86-64 CPU) on x86-64, else native.
#                         Empty or "none" leaves -march out (portable).
#   SPARSE_OPS_BAZEL_ROOT Bazel --output_user_root
#                         ($HOME/.cache/bazel-sparse-ops).
#   SPARSE_OPS_NVCC       nvcc for --config=cuda (default $CUDA_PATH/bin/nvcc
#                         if CUDA_PATH is set, else nvcc on PATH, else
#                         /usr/local/cuda/bin/nvcc).
#   SPARSE_OPS_NVCC_FLAGS extra nvcc flags (after kernels/cuda/nvcc_flags.txt).
#   SPARSE_OPS_CUDA_ARCHS GPU architectures, e.g. "90", instead of the file's.
#   RULES_JAVA_PATH       rules_java to use (/usr/share/bazel/rules/java, from
#                         Debian's bazel-rules-java).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$(pwd -P)"

PYTHON="${PYTHON_BIN_PATH:-python3}"
# The pip build's default: -march=native on a CPU with AVX512-FP16 also
# breaks Eigen's FP16 packets under g++ 12.
case "$(uname -m)" in
  x86_64 | amd64)
    DEFAULT_MARCH="$(sed -n 's/^DEFAULT_MARCH = "\(.*\)"$/\1/p' kernels/sources.bzl)"
    [[ -n "$DEFAULT_MARCH" ]] || {
      echo "configure.sh: error: no DEFAULT_MARCH = \"...\" line in kernels/sources.bzl" >&2
      exit 1
    }
    ;;
  *) DEFAULT_MARCH=native ;;
esac
MARCH="${SPARSE_OPS_MARCH-$DEFAULT_MARCH}"
BAZEL_ROOT="${SPARSE_OPS_BAZEL_ROOT:-${HOME:-/tmp}/.cache/bazel-sparse-ops}"
# nvcc: as setup.py finds it (PATH, then /usr/local/cuda), CUDA_PATH first.
if [[ -n "${SPARSE_OPS_NVCC:-}" ]]; then
  NVCC="$SPARSE_OPS_NVCC"
elif [[ -n "${CUDA_PATH:-}" ]]; then
  NVCC="$CUDA_PATH/bin/nvcc"
elif command -v nvcc >/dev/null 2>&1; then
  NVCC="$(command -v nvcc)"
else
  NVCC=/usr/local/cuda/bin/nvcc
fi
# nvcc flags: kernels/cuda/nvcc_flags.txt (as setup.py reads it), the
# -gencode lines replaced by SPARSE_OPS_CUDA_ARCHS when set, then
# SPARSE_OPS_NVCC_FLAGS.
NVCC_FLAGS=""
while IFS= read -r line; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  if [[ -n "${SPARSE_OPS_CUDA_ARCHS:-}" && "$line" == -gencode* ]]; then continue; fi
  NVCC_FLAGS+="$line "
done <kernels/cuda/nvcc_flags.txt
for arch in ${SPARSE_OPS_CUDA_ARCHS:-}; do
  NVCC_FLAGS+="-gencode=arch=compute_$arch,code=sm_$arch "
done
NVCC_FLAGS+="${SPARSE_OPS_NVCC_FLAGS:-}"
RULES_JAVA="${RULES_JAVA_PATH:-/usr/share/bazel/rules/java}"

die() { echo "configure.sh: error: $*" >&2; exit 1; }

# Starlark string literal of $1.
starlark_str() {
  local s="${1//\\/\\\\}"
  s="${s//\"/\\\"}"
  printf '"%s"' "$s"
}

# --- TensorFlow --------------------------------------------------------------
TF_PATHS="$(TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" -c '
import tensorflow as tf
import json
print(tf.sysconfig.get_include())
print(tf.sysconfig.get_lib())
print(tf.__version__)
# The compile flags but the include path (the repository rule provides it),
# as setup.py passes them: the C++ ABI and Eigen alignment of TensorFlow.
print(json.dumps([f for f in tf.sysconfig.get_compile_flags()
                  if not f.startswith("-I")]))
' 2>/dev/null)" || die "cannot import tensorflow with '$PYTHON' (set PYTHON_BIN_PATH)"
TF_INCLUDE="$(sed -n 1p <<<"$TF_PATHS")"
TF_LIB="$(sed -n 2p <<<"$TF_PATHS")"
TF_VERSION="$(sed -n 3p <<<"$TF_PATHS")"
TF_COPTS="$(sed -n 4p <<<"$TF_PATHS")"
TF_FRAMEWORK="$TF_LIB/libtensorflow_framework.so.2"
[[ -f "$TF_INCLUDE/tensorflow/core/framework/op_kernel.h" ]] ||
  die "no TensorFlow headers in $TF_INCLUDE"
[[ -f "$TF_INCLUDE/Eigen/Core" ]] || die "no Eigen headers in $TF_INCLUDE"
[[ -f "$TF_FRAMEWORK" ]] || die "$TF_FRAMEWORK not found"

case "$MARCH" in
  "" | none) MARCH_COPTS="[]" ;;
  *[!A-Za-z0-9_.-]*) die "bad SPARSE_OPS_MARCH '$MARCH'" ;;
  *) MARCH_COPTS="[\"-march=$MARCH\"]" ;;
esac

# --- Repositories that Bazel would otherwise download ------------------------
[[ -f "$RULES_JAVA/WORKSPACE" ]] ||
  die "rules_java not found at $RULES_JAVA (apt-get install bazel-rules-java, or set RULES_JAVA_PATH)"
for d in "$ROOT" "$RULES_JAVA" "$BAZEL_ROOT"; do
  [[ "$d" != *[[:space:]]* ]] || die "path with whitespace not supported: '$d'"
done

# --- @local_config_tf --------------------------------------------------------
OUT="third_party/local_config_tf"
TMP="$(mktemp -d "third_party/.local_config_tf.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
chmod 755 "$TMP"
mkdir -p "$TMP/lib"
ln -s "$TF_INCLUDE" "$TMP/include"
ln -s "$TF_FRAMEWORK" "$TMP/lib/libtensorflow_framework.so.2"
echo 'workspace(name = "local_config_tf")' >"$TMP/WORKSPACE"
cp third_party/tf/local_config_tf.BUILD "$TMP/BUILD"
cat >"$TMP/build_defs.bzl" <<EOF
"""Generated by ./configure.sh; do not edit (rerun it)."""

# TensorFlow $TF_VERSION of $PYTHON
TF_INCLUDE_DIR = $(starlark_str "$TF_INCLUDE")
TF_LIB_DIR = $(starlark_str "$TF_LIB")

# tf.sysconfig.get_compile_flags() but -I
TF_COPTS = $TF_COPTS

# SPARSE_OPS_MARCH=$MARCH
MARCH_COPTS = $MARCH_COPTS

# --config=cuda
NVCC = $(starlark_str "$NVCC")
NVCC_FLAGS = $(starlark_str "$NVCC_FLAGS")
EOF
# Replace the old directory only where something changed, so that an
# unchanged rerun does not touch what Bazel has seen.
changed=1
if [[ -d "$OUT" ]]; then
  changed=0
  for f in WORKSPACE BUILD build_defs.bzl; do
    cmp -s "$TMP/$f" "$OUT/$f" || changed=1
  done
  [[ "$(readlink "$OUT/include" || true)" == "$TF_INCLUDE" ]] || changed=1
  [[ "$(readlink "$OUT/lib/libtensorflow_framework.so.2" || true)" == "$TF_FRAMEWORK" ]] || changed=1
fi
if [[ $changed == 1 ]]; then
  rm -rf "$OUT"
  mv "$TMP" "$OUT"
fi

# --- .bazelrc.user -----------------------------------------------------------
RC_TMP="$(mktemp ".bazelrc.user.XXXXXX")"
{
  echo "# Generated by ./configure.sh; do not edit (rerun it). Imported by .bazelrc."
  echo "startup --output_user_root=$BAZEL_ROOT"
  for cmd in build query fetch sync; do
    echo "$cmd --override_repository=rules_cc=$ROOT/third_party/rules_cc"
    echo "$cmd --override_repository=rules_java=$RULES_JAVA"
    echo "$cmd --override_repository=remote_coverage_tools=$ROOT/third_party/remote_coverage_tools"
  done
} >"$RC_TMP"
if cmp -s "$RC_TMP" .bazelrc.user; then
  rm -f "$RC_TMP"
else
  mv "$RC_TMP" .bazelrc.user
fi

echo "configure.sh: TensorFlow $TF_VERSION ($TF_INCLUDE)"
echo "configure.sh: -march: ${MARCH:-(none)}; Bazel output_user_root: $BAZEL_ROOT"
echo "configure.sh: now run: bazel build //... && bazel test //..."
