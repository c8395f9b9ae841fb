#!/usr/bin/env bash
# Prove that the base install (`pip install edgetl`, no TensorFlow) runs exported models on a
# Raspberry Pi (arm64) -- by emulation, on an x86 host.
#
#   sudo bash scripts/pi_check.sh [EXPORT_DIR [IMAGES_DIR]]
#
# 1. builds (or reuses) an arm64 Debian 12 root with `debootstrap --arch=arm64 --foreign` + second
#    stage, run through qemu-user-static (binfmt_misc), with python3/python3-venv/python3-pip;
# 2. fakes a Raspberry Pi CPU inside it: QEMU_CPU=cortex-a72 (Pi 4) or cortex-a76 (Pi 5), and a
#    matching /proc/cpuinfo and /sys/devices/system/cpu bind-mounted over the root's own
#    (onnxruntime's CPU detection otherwise reads the x86 host's /proc/cpuinfo and segfaults);
# 3. builds the edgetl wheel on the host and installs it in a fresh venv in the root, base install
#    only (`pip install --only-binary=:all: edgetl-*.whl`, no extras);
# 4. makes exported files with `edgetl demo` on the host (unless EXPORT_DIR is given), copies the
#    .tflite/.onnx files and a few labelled validation images (IMAGES_DIR/<class>/*) into the root;
# 5. runs `edgetl predict --json` with every file in the root and on the host and compares top-1
#    per image per file, runs the default `edgetl bench` in the root (every runtime the base install
#    has, no --runtimes; only the timing budget is cut short), writes
#    benchmarks/results/pi_check_<date>_<cpu>.json and exits non-zero on any difference or failure
#    (a runtime that crashes its probe child there is a skipped row, not a failure: bench goes on).
#
# Emulated latency says nothing about a Pi's speed: it is not reported. All mounts are made in a
# private mount namespace and are also unmounted on exit (trap), on success or failure.
#
# Environment (all optional):
#   EDGETL_PI_ROOT     arm64 root folder (default /tmp/edgetl-pi-root; reused when complete)
#   EDGETL_PI_WORK     scratch folder for the wheel, demo, images and outputs (default /tmp/edgetl-pi-work)
#   EDGETL_PI_CPU      cortex-a72 (Pi 4, default) or cortex-a76 (Pi 5)
#   EDGETL_PI_IMAGES_PER_CLASS  validation images copied per class (default 3)
#   EDGETL_PI_MIRROR   Debian mirror for debootstrap (default: the host's apt source)
#   EDGETL_PI_RESULT   result file (default benchmarks/results/pi_check_<date>_<cpu>.json)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${EDGETL_PI_ROOT:-/tmp/edgetl-pi-root}"
WORK="${EDGETL_PI_WORK:-/tmp/edgetl-pi-work}"
CPU="${EDGETL_PI_CPU:-cortex-a72}"
PER_CLASS="${EDGETL_PI_IMAGES_PER_CLASS:-3}"
RESULT="${EDGETL_PI_RESULT:-$REPO/benchmarks/results/pi_check_$(date +%Y-%m-%d)_$CPU.json}"
VENV_PY="$REPO/.venv/bin/python"
HOST_EDGETL="$REPO/.venv/bin/edgetl"
SUITE=bookworm
IN_ROOT=/opt/edgetl-check           # inside the root: wheel/, models/, images/, out/
ROOT_VENV=/opt/edgetl-venv          # inside the root
MARKER=.edgetl-pi-root-complete     # written in the root once it is fully built
EXPORT_ARG="${1:-}"
IMAGES_ARG="${2:-}"

log() { printf '[pi_check %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'pi_check: error: %s\n' "$*" >&2; exit 1; }
step_start() { STEP_T0=$SECONDS; log "$*"; }
declare -A STEP_SECONDS=()
step_end() { STEP_SECONDS[$1]=$((SECONDS - STEP_T0)); }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts): sudo bash $0"
[ "$(uname -m)" = x86_64 ] || [ "$(uname -m)" = aarch64 ] || die "unsupported host $(uname -m)"
case "$CPU" in
  cortex-a72|cortex-a76) ;;
  *) die "EDGETL_PI_CPU must be cortex-a72 (Pi 4) or cortex-a76 (Pi 5), not '$CPU'" ;;
esac
case "$ROOT" in
  /|/tmp|/tmp/|"") die "refusing EDGETL_PI_ROOT='$ROOT'" ;;
  /*) ;;
  *) die "EDGETL_PI_ROOT must be an absolute path" ;;
esac
[ -z "$EXPORT_ARG" ] || [ -d "$EXPORT_ARG" ] || die "EXPORT_DIR '$EXPORT_ARG' is not a folder"
[ -z "$IMAGES_ARG" ] || [ -d "$IMAGES_ARG" ] || die "IMAGES_DIR '$IMAGES_ARG' is not a folder"
[ -x "$VENV_PY" ] || die "no host venv at $REPO/.venv (python3 -m venv .venv && .venv/bin/pip install -e '.[train]')"

# ---------------------------------------------------------------------------------------------
# Host tools and binfmt_misc (kept in the host's mount namespace: it is what binfmt-support does)
# ---------------------------------------------------------------------------------------------
if [ -z "${EDGETL_PI_IN_NS:-}" ]; then
  T_START=$(date +%s)
  missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  if [ ${#missing[@]} -gt 0 ] && [ "$(uname -m)" != aarch64 ]; then
    log "installing ${missing[*]} with apt-get"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap qemu-user-static binfmt-support >/dev/null
  fi
  if [ "$(uname -m)" != aarch64 ]; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
    [ -r /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
      || die "binfmt_misc has no enabled qemu-aarch64 entry (update-binfmts --enable qemu-aarch64 failed)"
  fi
  # Everything else runs in a private mount namespace: whatever happens to this script, no mount
  # it makes outlives it or shows up anywhere else. The EXIT trap below unmounts them as well.
  exec unshare --mount --propagation private env EDGETL_PI_IN_NS=1 EDGETL_PI_T_START="$T_START" \
    bash "$0" "$@"
fi
T_START="${EDGETL_PI_T_START:-$(date +%s)}"

# ---------------------------------------------------------------------------------------------
# Cleanup: unmount everything under $ROOT, deepest first, on any exit
# ---------------------------------------------------------------------------------------------
umount_root() {
  local m tries
  for tries in 1 2 3; do
    mapfile -t mounts < <(awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/self/mounts | sort -r)
    [ ${#mounts[@]} -eq 0 ] && return 0
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
  awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 {print "pi_check: warning: still mounted: " $2}' /proc/self/mounts >&2
}
cleanup() {
  local rc=$?
  umount_root
  [ -n "${LOCK_FD:-}" ] && exec {LOCK_FD}>&- || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$WORK" "$(dirname "$ROOT")"
exec {LOCK_FD}>"$ROOT.lock"
flock -n "$LOCK_FD" || die "another pi_check is using $ROOT ($ROOT.lock)"
umount_root   # leftovers of a killed run (there should be none: private namespace)

# ---------------------------------------------------------------------------------------------
# Fake Raspberry Pi CPU: /proc/cpuinfo text and a /sys/devices/system/cpu tree
# ---------------------------------------------------------------------------------------------
if [ "$CPU" = cortex-a72 ]; then
  PI_MODEL="Raspberry Pi 4 Model B Rev 1.4"; PI_REV=d03114
  FEATURES="fp asimd evtstrm crc32 cpuid"; VARIANT=0x0; PART=0xd08; REVISION=3
  MIN_KHZ=600000; MAX_KHZ=1800000; HARDWARE="Hardware	: BCM2835"
else
  PI_MODEL="Raspberry Pi 5 Model B Rev 1.0"; PI_REV=d04170
  FEATURES="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
  VARIANT=0x4; PART=0xd0b; REVISION=1; MIN_KHZ=1500000; MAX_KHZ=2400000; HARDWARE=""
fi
FAKE="$WORK/fake-$CPU"
rm -rf "$FAKE"; mkdir -p "$FAKE/cpu"
{
  for i in 0 1 2 3; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$FEATURES"
    printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$VARIANT" "$PART" "$REVISION"
  done
  [ -n "$HARDWARE" ] && printf '%s\n' "$HARDWARE"
  printf 'Revision\t: %s\nSerial\t\t: 10000000edge7100\nModel\t\t: %s\n' "$PI_REV" "$PI_MODEL"
} > "$FAKE/cpuinfo"
for f in online possible present; do echo 0-3 > "$FAKE/cpu/$f"; done
echo 0 > "$FAKE/cpu/offline"; echo 3 > "$FAKE/cpu/kernel_max"
for i in 0 1 2 3; do
  d="$FAKE/cpu/cpu$i"; mkdir -p "$d/topology" "$d/cpufreq"
  echo 1 > "$d/online"
  echo 0 > "$d/topology/physical_package_id"; echo "$i" > "$d/topology/core_id"
  echo 0-3 > "$d/topology/core_siblings_list"; echo 0-3 > "$d/topology/package_cpus_list"
  echo 0-3 > "$d/topology/cluster_cpus_list"; echo "$i" > "$d/topology/thread_siblings_list"
  echo "$i" > "$d/topology/core_cpus_list"
  echo "$MIN_KHZ" > "$d/cpufreq/cpuinfo_min_freq"; echo "$MAX_KHZ" > "$d/cpufreq/cpuinfo_max_freq"
done

# ---------------------------------------------------------------------------------------------
# Mounts inside the root (proc and sys are new instances, not binds of the host's, with the fake
# CPU bound over them; /dev is a tmpfs with binds of a few host device nodes)
# ---------------------------------------------------------------------------------------------
mount_root() {
  mount -t proc proc "$ROOT/proc"
  mount --bind -o ro "$FAKE/cpuinfo" "$ROOT/proc/cpuinfo"
  mount -t sysfs -o ro sysfs "$ROOT/sys"
  mount --bind -o ro "$FAKE/cpu" "$ROOT/sys/devices/system/cpu"
  mount -t tmpfs -o mode=0755,size=16m devtmp "$ROOT/dev"
  local n
  for n in null zero full random urandom tty; do
    touch "$ROOT/dev/$n"; mount --bind "/dev/$n" "$ROOT/dev/$n"
  done
  mkdir -p "$ROOT/dev/shm" "$ROOT/dev/pts"
  mount -t tmpfs -o mode=1777,size=256m shm "$ROOT/dev/shm"
  ln -sf /proc/self/fd "$ROOT/dev/fd"; ln -sf /proc/self/fd/0 "$ROOT/dev/stdin"
  ln -sf /proc/self/fd/1 "$ROOT/dev/stdout"; ln -sf /proc/self/fd/2 "$ROOT/dev/stderr"
  grep -q "^processor.*: 0" "$ROOT/proc/cpuinfo" && grep -q "CPU part.*$PART" "$ROOT/proc/cpuinfo" \
    || die "fake /proc/cpuinfo is not in place in the root"
}

# ---------------------------------------------------------------------------------------------
# pip index settings: the host's (config files and PIP_* environment), http(s) ones only
# ---------------------------------------------------------------------------------------------
PIP_ENV=()
PIP_NOTE=$("$VENV_PY" - "$WORK/pip-env" <<'EOF'
import subprocess, sys, shlex
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
vals = {}
for line in out.splitlines():
    if "=" not in line:
        continue
    key, val = line.split("=", 1)
    scope, _, name = key.rpartition(".")
    val = val.strip().strip("'\"")
    # later lines (and the environment) win over earlier ones, as in pip
    if name in ("index-url", "extra-index-url", "trusted-host"):
        if scope == ":env:" or name not in vals or vals[name][0] != ":env:":
            vals[name] = (scope, val)
env, notes = {}, []
for name, (scope, val) in sorted(vals.items()):
    items = val.split()
    keep = [v for v in items if name == "trusted-host" or v.startswith(("http://", "https://"))]
    skip = [v for v in items if v not in keep]
    if skip:
        notes.append(f"{name} {' '.join(skip)} (host-local, not passed)")
    if keep:
        env["PIP_" + name.upper().replace("-", "_")] = " ".join(keep)
        notes.append(f"{name}={' '.join(keep)} (from {scope or 'config'})")
with open(sys.argv[1], "w") as f:
    for k, v in env.items():
        f.write(f"{k}={v}\n")
print("; ".join(notes) if any("=" in n for n in notes) else
      "no http(s) index configured on the host: pip's default index" + ("; " + "; ".join(notes) if notes else ""))
EOF
)
while IFS= read -r kv; do [ -n "$kv" ] && PIP_ENV+=("$kv"); done < "$WORK/pip-env"
log "pip index in the root: $PIP_NOTE"

# Run a command in the root under qemu, with a clean environment.
in_root() {
  env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    QEMU_CPU="$CPU" \
    PIP_CERT=/usr/local/share/edgetl-host-ca.crt SSL_CERT_FILE=/usr/local/share/edgetl-host-ca.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PIP_NO_INPUT=1 \
    "${PIP_ENV[@]}" \
    nice -n 10 chroot "$ROOT" "$@"
}

# ---------------------------------------------------------------------------------------------
# 1. The arm64 Debian 12 root
# ---------------------------------------------------------------------------------------------
step_start "arm64 $SUITE root in $ROOT"
if [ -f "$ROOT/$MARKER" ]; then
  log "reusing $ROOT ($(cat "$ROOT/$MARKER"))"
else
  if [ ! -x "$ROOT/debootstrap/debootstrap" ]; then
    if [ -d "$ROOT" ] && [ -n "$(ls -A "$ROOT" 2>/dev/null)" ]; then
      die "$ROOT exists, is not empty and is not a (partial) pi_check root: remove it or set EDGETL_PI_ROOT"
    fi
    MIRROR="${EDGETL_PI_MIRROR:-}"
    if [ -z "$MIRROR" ]; then   # the host's Debian mirror (deb822 or one-line sources)
      MIRROR=$(awk '/^URIs:/{u=$2} /^Suites:/ && / bookworm( |$)/ && u {print u; exit}' \
                 /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
      [ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    log "debootstrap first stage (arm64, minbase + python3, python3-venv, python3-pip) from ${MIRROR:-the default mirror of debootstrap}"
    mkdir -p "$ROOT"
    nice -n 10 debootstrap --arch=arm64 --foreign --variant=minbase \
      --include=python3,python3-venv,python3-pip,ca-certificates \
      "$SUITE" "$ROOT" ${MIRROR:+"$MIRROR"} > "$WORK/debootstrap-1.log" 2>&1 \
      || { tail -n 20 "$WORK/debootstrap-1.log" >&2; die "debootstrap first stage failed (log: $WORK/debootstrap-1.log)"; }
  fi
  # Without the F (fix-binary) flag the interpreter must be reachable inside the root.
  if [ "$(uname -m)" != aarch64 ] && ! grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    interp=$(awk '/^interpreter/{print $2}' /proc/sys/fs/binfmt_misc/qemu-aarch64)
    mkdir -p "$ROOT$(dirname "$interp")"; cp /usr/bin/qemu-aarch64-static "$ROOT$interp"
  fi
  log "debootstrap second stage (under qemu, several minutes)"
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 QEMU_CPU="$CPU" \
    nice -n 10 chroot "$ROOT" /debootstrap/debootstrap --second-stage > "$WORK/debootstrap-2.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap-2.log" >&2; umount_root; die "debootstrap second stage failed (log: $WORK/debootstrap-2.log)"; }
  umount_root   # the second stage may leave its own proc/sys mounts
  echo "debian $SUITE arm64 built $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$ROOT/$MARKER"
fi
step_end root
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
mkdir -p "$ROOT/usr/local/share"
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/usr/local/share/edgetl-host-ca.crt"
mount_root

# ---------------------------------------------------------------------------------------------
# 2. The wheel (built on the host from a copy of the work tree: the repo is not touched)
# ---------------------------------------------------------------------------------------------
step_start "building the edgetl wheel on the host"
rm -rf "$WORK/src" "$WORK/wheel"; mkdir -p "$WORK/src" "$WORK/wheel"
(cd "$REPO" && git ls-files -z -c -o --exclude-standard | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
   | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
(cd "$WORK/src" && nice -n 10 "$VENV_PY" -m pip wheel -q --no-deps -w "$WORK/wheel" . > "$WORK/wheel.log" 2>&1) \
  || { tail -n 20 "$WORK/wheel.log" >&2; die "pip wheel failed"; }
WHEEL=$(ls "$WORK"/wheel/edgetl-*.whl | head -n 1)
GIT_REV=$(cd "$REPO" && git rev-parse --short HEAD)
GIT_DIRTY=$(cd "$REPO" && { git diff --quiet HEAD -- edgetl pyproject.toml && echo false || echo true; })
log "wheel $(basename "$WHEEL") (commit $GIT_REV, uncommitted changes in edgetl/: $GIT_DIRTY)"
step_end wheel

# ---------------------------------------------------------------------------------------------
# 3. Base install in a fresh venv in the root
# ---------------------------------------------------------------------------------------------
step_start "base install in a fresh venv in the root (pip under qemu)"
rm -rf "$ROOT$IN_ROOT" "$ROOT$ROOT_VENV"
mkdir -p "$ROOT$IN_ROOT"/{wheel,models,images,out}
cp "$WHEEL" "$ROOT$IN_ROOT/wheel/"
in_root python3 -m venv "$ROOT_VENV" > "$WORK/install.log" 2>&1 || { cat "$WORK/install.log" >&2; die "venv failed"; }
in_root "$ROOT_VENV/bin/pip" install --only-binary=:all: "$IN_ROOT/wheel/$(basename "$WHEEL")" >> "$WORK/install.log" 2>&1 \
  || { tail -n 30 "$WORK/install.log" >&2; die "base install in the root failed (log: $WORK/install.log)"; }
in_root "$ROOT_VENV/bin/python" - > "$WORK/root-env.json" 2>>"$WORK/install.log" <<'EOF' \
  || { tail -n 30 "$WORK/install.log" >&2; die "importing the runtimes in the root failed"; }
import json, platform, importlib.metadata as md
vers = {}
for d in ("edgetl", "ai-edge-litert", "onnxruntime", "numpy", "pillow", "typer", "pip"):
    try:
        vers[d] = md.version(d)
    except md.PackageNotFoundError:
        vers[d] = None
tf = any(d.metadata["Name"].lower() in ("tensorflow", "tensorflow-cpu", "tf-keras") for d in md.distributions())
import onnxruntime, ai_edge_litert.interpreter  # the imports that segfault without the fake cpuinfo
print(json.dumps({"versions": vers, "tensorflow_installed": tf, "machine": platform.machine(),
                  "python": platform.python_version(), "libc": " ".join(platform.libc_ver()),
                  "onnxruntime_providers": onnxruntime.get_available_providers()}))
EOF
log "root: $(cat "$WORK/root-env.json")"
step_end install

# ---------------------------------------------------------------------------------------------
# 4. Exported files and images
# ---------------------------------------------------------------------------------------------
step_start "exported files and images"
if [ -n "$EXPORT_ARG" ]; then
  EXPORT_DIR="$(cd "$EXPORT_ARG" && pwd)"
  IMAGES_SRC="${IMAGES_ARG:-}"
  if [ -z "$IMAGES_SRC" ]; then   # an `edgetl demo` folder's export/ sits in run/; its images in data/val
    for c in "$EXPORT_DIR/../../data/val" "$EXPORT_DIR/../data/val"; do [ -d "$c" ] && IMAGES_SRC="$c" && break; done
  fi
  [ -n "$IMAGES_SRC" ] || die "give labelled images as the second argument (IMAGES_DIR/<class>/*.jpg)"
else
  DEMO="$WORK/demo"
  log "edgetl demo --out $DEMO --overwrite (host; trains and exports a small model, a few minutes)"
  nice -n 10 "$HOST_EDGETL" demo --out "$DEMO" --overwrite > "$WORK/demo.log" 2>&1 \
    || { tail -n 30 "$WORK/demo.log" >&2; die "edgetl demo failed (log: $WORK/demo.log)"; }
  EXPORT_DIR="$DEMO/run/export"; IMAGES_SRC="${IMAGES_ARG:-$DEMO/data/val}"
fi
IMAGES_SRC="$(cd "$IMAGES_SRC" 2>/dev/null && pwd)" || die "no image folder ${IMAGES_ARG:-next to $EXPORT_DIR}"
mapfile -t MODELS < <(find "$EXPORT_DIR" -maxdepth 1 -type f \( -name '*.tflite' -o -name '*.onnx' \) | sort)
[ ${#MODELS[@]} -gt 0 ] || die "no .tflite/.onnx files in $EXPORT_DIR"
IMAGES="$WORK/images"; rm -rf "$IMAGES"; mkdir -p "$IMAGES"
for cls in "$IMAGES_SRC"/*/; do
  cls=$(basename "$cls"); mkdir -p "$IMAGES/$cls"
  find "$IMAGES_SRC/$cls" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | sort \
    | head -n "$PER_CLASS" | while IFS= read -r f; do cp "$f" "$IMAGES/$cls/"; done
done
N_IMAGES=$(find "$IMAGES" -type f | wc -l)
[ "$N_IMAGES" -gt 0 ] || die "no images found in $IMAGES_SRC/<class>/"
cp "${MODELS[@]}" "$ROOT$IN_ROOT/models/"
[ -f "$EXPORT_DIR/labels.txt" ] && cp "$EXPORT_DIR/labels.txt" "$ROOT$IN_ROOT/models/"
cp -r "$IMAGES"/. "$ROOT$IN_ROOT/images/"
log "${#MODELS[@]} files from $EXPORT_DIR, $N_IMAGES images from $IMAGES_SRC"
step_end data

# ---------------------------------------------------------------------------------------------
# 5. predict in the root and on the host; a short bench in the root
# ---------------------------------------------------------------------------------------------
OUT="$WORK/out"; rm -rf "$OUT"; mkdir -p "$OUT/root" "$OUT/host"
step_start "edgetl predict in the root (emulated $CPU) and on the host"
PRED_FAIL=0
for m in "${MODELS[@]}"; do
  b=$(basename "$m")
  log "  predict $b"
  if ! in_root "$ROOT_VENV/bin/edgetl" predict "$IN_ROOT/models/$b" "$IN_ROOT/images" --json -k 3 --threads 1 \
       > "$OUT/root/$b.json" 2> "$OUT/root/$b.err"; then
    log "  predict $b FAILED in the root:"; tail -n 15 "$OUT/root/$b.err" >&2; PRED_FAIL=1
  fi
  if ! nice -n 10 "$HOST_EDGETL" predict "$m" "$IMAGES" --json -k 3 --threads 1 \
       > "$OUT/host/$b.json" 2> "$OUT/host/$b.err"; then
    log "  predict $b FAILED on the host:"; tail -n 15 "$OUT/host/$b.err" >&2; PRED_FAIL=1
  fi
done
step_end predict

step_start "default edgetl bench in the root, short timing (accuracy and a smoke test; emulated latency is not reported)"
BENCH_RC=0
rm -rf "$ROOT/root/.cache/edgetl/probes"   # each check probes the crash-prone runtimes afresh (bench caches them)
in_root "$ROOT_VENV/bin/edgetl" bench "${MODELS[@]/#*\//$IN_ROOT/models/}" --data "$IN_ROOT/images" \
  --threads 1 --warmup-runs 1 --warmup-time 0 --min-runs 3 --min-time 0 --max-time 10 --no-keras \
  --out "$IN_ROOT/out/bench" --json > "$OUT/root/bench.json" 2> "$OUT/root/bench.err" || BENCH_RC=$?
[ "$BENCH_RC" = 0 ] || { log "bench FAILED in the root (exit $BENCH_RC):"; tail -n 15 "$OUT/root/bench.err" >&2; }
step_end bench

# ---------------------------------------------------------------------------------------------
# 6. Compare, summarize, write the result
# ---------------------------------------------------------------------------------------------
HOST_VERS=$("$VENV_PY" -c 'import json, importlib.metadata as md
print(json.dumps({d: md.version(d) for d in ("ai-edge-litert", "onnxruntime", "numpy", "pillow")}))')
QEMU_VER=$( { qemu-aarch64-static --version 2>/dev/null || echo "native aarch64"; } | head -n 1)
STEPS=$(for k in "${!STEP_SECONDS[@]}"; do printf '%s=%s\n' "$k" "${STEP_SECONDS[$k]}"; done)
mkdir -p "$(dirname "$RESULT")"
set +e
"$VENV_PY" - "$OUT" "$WORK/root-env.json" "$RESULT" <<EOF
import json, os, sys, time, datetime
out, env_file, result = sys.argv[1:4]
models = [os.path.basename(m) for m in """$(printf '%s\n' "${MODELS[@]}")""".split()]
root_env = json.load(open(env_file))

def load(side, b):
    try:
        rows = json.load(open(os.path.join(out, side, b + ".json")))
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"
    if isinstance(rows, dict):
        rows = rows.get("results") or rows.get("predictions") or []
    res = {}
    for r in rows:
        key = os.path.join(os.path.basename(os.path.dirname(r["file"])), os.path.basename(r["file"]))
        res[key] = r
    return res, None

files, total, agree, problems = [], 0, 0, []
for b in models:
    host, herr = load("host", b)
    root, rerr = load("root", b)
    entry = {"file": b}
    if herr or rerr or not host or not root:
        entry["error"] = herr or rerr or "no predictions"
        problems.append(f"{b}: {entry['error']}")
        files.append(entry)
        continue
    n = a = 0
    diffs, max_dscore = [], 0.0
    for img in sorted(set(host) | set(root)):
        n += 1
        h, r = host.get(img), root.get(img)
        if h is None or r is None:
            diffs.append({"image": img, "missing_on": "host" if h is None else "root"})
            continue
        if h["indices"][0] == r["indices"][0]:
            a += 1
        else:
            diffs.append({"image": img, "host": h["labels"][0], "root": r["labels"][0]})
        max_dscore = max(max_dscore, abs(float(h["scores"][0]) - float(r["scores"][0])))
    entry.update(images=n, top1_agree=a, max_top1_score_diff=round(max_dscore, 6), differences=diffs)
    total += n; agree += a
    if a != n:
        problems.append(f"{b}: top-1 differs on {n - a} of {n} images")
    files.append(entry)

bench = {"exit_code": int("$BENCH_RC")}
try:
    bj = json.load(open(os.path.join(out, "root", "bench.json")))
    rows = bj.get("rows") or bj.get("results") or []
    bench["rows"] = [{k: r.get(k) for k in ("model", "format", "runtime", "precision", "threads", "n_images", "correct", "top1", "status")
                      if k in r} for r in rows]
    bench["runtimes"] = sorted({r.get("runtime") for r in rows})
    bench["rows_ok"] = sum(r.get("status") == "ok" for r in rows)
    bench["rows_skipped"] = sum(str(r.get("status")).startswith("skipped") for r in rows)
    if not bench["rows_ok"]:
        problems.append("bench in the root measured no row")
except Exception as e:
    bench["error"] = f"{type(e).__name__}: {e}"
if bench["exit_code"] != 0 or "error" in bench:
    problems.append(f"bench in the root failed (exit {bench['exit_code']})")
if int("$PRED_FAIL"):
    problems.append("a predict run failed (see the log lines above)")
if root_env.get("tensorflow_installed"):
    problems.append("TensorFlow got installed by the base install")

steps = dict(l.split("=") for l in """$STEPS""".split())
summary = {
    "check": "edgetl base install on emulated Raspberry Pi (arm64) vs the x86 host: top-1 of edgetl predict",
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "passed": not problems,
    "problems": problems,
    "emulated_cpu": "$CPU (QEMU_CPU), /proc/cpuinfo faked as '$PI_MODEL'",
    "qemu": "$QEMU_VER",
    "root": {"os": "Debian 12 ($SUITE) arm64, debootstrap", **root_env},
    "host_versions": json.loads('$HOST_VERS'),
    "wheel": "$(basename "$WHEEL")", "git_commit": "$GIT_REV", "uncommitted_changes_in_edgetl": "$GIT_DIRTY" == "true",
    "pip_index": """$PIP_NOTE""",
    "files": len(models), "images": int("$N_IMAGES"),
    "comparisons": total, "top1_agree": agree,
    "agreement_percent": round(100.0 * agree / total, 2) if total else None,
    "per_file": files,
    "bench_in_root": bench,
    "latency": "not reported: emulated (qemu) latency says nothing about a Pi's speed",
    "seconds": {"total": int(time.time()) - int("$T_START"), **{k: int(v) for k, v in steps.items()}},
}
with open(result, "w") as f:
    json.dump(summary, f, indent=2); f.write("\n")
v = root_env["versions"]
print()
print("=== edgetl pi_check:", "PASSED" if not problems else "FAILED", "===")
print(f"emulated CPU : {summary['emulated_cpu']}; {summary['qemu']}")
print(f"root         : Debian 12 arm64, Python {root_env['python']}, {root_env['libc']}, machine {root_env['machine']}")
print(f"base install : edgetl {v.get('edgetl')}, ai-edge-litert {v.get('ai-edge-litert')}, onnxruntime {v.get('onnxruntime')}, "
      f"numpy {v.get('numpy')}, pillow {v.get('pillow')} (pip {v.get('pip')}); TensorFlow installed: {root_env['tensorflow_installed']}")
print(f"host         : " + ", ".join(f"{k} {x}" for k, x in summary['host_versions'].items()))
for e in files:
    if "error" in e:
        print(f"  {e['file']:<34} ERROR {e['error']}")
    else:
        print(f"  {e['file']:<34} top-1 agree {e['top1_agree']}/{e['images']}  max |top-1 score diff| {e['max_top1_score_diff']:.4g}")
print(f"files {len(models)}, images {summary['images']}: top-1 agreement {agree}/{total}"
      + (f" ({summary['agreement_percent']} %)" if total else ""))
print(f"bench in the root: exit {bench['exit_code']}" + "".join(
      f"; {r.get('model')} {r.get('status')}" for r in bench.get("rows", [])))
print(f"time {summary['seconds']['total']} s; result written to {result}")
for p in problems:
    print("problem:", p)
sys.exit(0 if not problems else 1)
EOF
RC=$?
set -e
exit $RC
