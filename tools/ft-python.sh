#!/usr/bin/env bash
# Obtains a free-threaded CPython 3.13 (built with --disable-gil) and prints its path.
#
# The interpreter is built from Debian's own python3.13 source package (suite trixie), fetched
# with a private apt configuration (own sources list, state, cache and etc directories) that
# points at the same Debian mirror the machine's apt sources already use. Nothing system-wide
# changes, except that missing -dev packages for the standard library's C modules are
# installed with the system's apt-get when running as root.
#
# The result lives outside the repository, in $SKQUEUE_FT_DIR
# (default: ${XDG_CACHE_HOME:-~/.cache}/skqueue/python3.13t), and is reused when it is
# present and working. Progress goes to stderr, the build log to $SKQUEUE_FT_DIR/build.log;
# the only line on stdout is the interpreter's path.
#
# Environment:
#   SKQUEUE_FT_DIR     where the interpreter is installed (its --prefix) and built
#   SKQUEUE_FT_SUITE   Debian suite to take the source from (default: trixie)
#   SKQUEUE_FT_MIRROR  Debian archive URI to use instead of the one in the apt sources
#   SKQUEUE_FT_JOBS    make -j value (default: 2)
#   SKQUEUE_FT_REBUILD=1  ignore a cached interpreter and build again
set -euo pipefail

DIR=${SKQUEUE_FT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/skqueue/python3.13t}
SUITE=${SKQUEUE_FT_SUITE:-trixie}
JOBS=${SKQUEUE_FT_JOBS:-2}
PY="$DIR/bin/python3.13t"
STAMP="$DIR/.skqueue-ft-ok"
# Written to $STAMP; change it when the recipe below changes, so old caches are rebuilt.
RECIPE="python3.13 --disable-gil, site.py venv fix (2)"
LOG="$DIR/build.log"
# Standard-library modules the project, pip and the test dependencies need.
NEED_MODULES="ssl zlib ctypes bz2 lzma sqlite3 hashlib"
# Debian packages providing the headers of those modules (and readline/curses/uuid).
DEV_PACKAGES="libssl-dev libffi-dev zlib1g-dev libbz2-dev liblzma-dev libsqlite3-dev
  libreadline-dev libncurses-dev uuid-dev libexpat1-dev"
# Tools the build needs (dpkg-source unpacks the source package).
BUILD_PACKAGES="build-essential dpkg-dev pkg-config"

say() { printf 'ft-python: %s\n' "$*" >&2; }
die() { printf 'ft-python: error: %s\n' "$*" >&2; exit 1; }

# True when $PY runs, has the GIL disabled, and imports the modules above.
works() {
    [ -x "$PY" ] || return 1
    "$PY" - "$NEED_MODULES" >/dev/null 2>&1 <<'EOF'
import importlib, sys
assert sys.version_info[:2] == (3, 13), sys.version
assert not sys._is_gil_enabled()
for name in sys.argv[1].split():
    importlib.import_module(name)
EOF
}

# True when a virtual environment of $PY sees its own site-packages (where pip installs).
venv_works() {
    local tmp ok=0
    tmp=$(mktemp -d) || return 1
    if "$PY" -m venv --without-pip "$tmp/v" >/dev/null 2>&1 &&
        "$tmp/v/bin/python" -c 'import sys, sysconfig; assert sysconfig.get_path("purelib") in sys.path' \
            >/dev/null 2>&1; then
        ok=1
    fi
    rm -rf "$tmp"
    [ "$ok" = 1 ]
}

# Prints why works() fails, for the error message.
diagnose() {
    "$PY" - "$NEED_MODULES" 2>&1 <<'EOF' || true
import importlib, sys
print("version", sys.version.split()[0], "GIL enabled:", sys._is_gil_enabled())
for name in sys.argv[1].split():
    try:
        importlib.import_module(name)
    except ImportError as e:
        print(f"cannot import {name}: {e}")
EOF
}

# The Debian archive URI of the machine's apt sources: the first one listed for a plain
# release suite (not -security/-updates/-backports), from deb822 .sources files or the
# one-line format.
mirror_uri() {
    local f uri files=()
    for f in /etc/apt/sources.list.d/*.sources; do [ -r "$f" ] && files+=("$f"); done
    if [ ${#files[@]} -gt 0 ]; then
        uri=$(awk '
            function flush() {
                if (uris != "" && suites ~ /(^| )[a-z]+( |$)/ && types ~ /deb/) {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                uris = ""; suites = ""; types = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:" { $1 = ""; types = $0 }
            tolower($1) == "uris:" { $1 = ""; uris = $0; sub(/^ +/, "", uris) }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            END { if (!found) flush() }
        ' "${files[@]}" | head -n 1)
        if [ -n "$uri" ]; then
            printf '%s\n' "$uri"
            return 0
        fi
    fi
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk '
            $1 != "deb" && $1 != "deb-src" { next }
            { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } }
            $(i + 1) ~ /^[a-z]+$/ { print $i; exit }
        ' "$f"
    done | head -n 1
}

ensure_build_packages() {
    local p missing=()
    for p in $BUILD_PACKAGES $DEV_PACKAGES; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        die "missing build packages: ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
    fi
    say "installing build packages with the system apt: ${missing[*]}"
    apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
}

# Private apt configuration under $DIR/_apt: only a deb-src line for $SUITE.
fetch_source() {
    local uri apt="$DIR/_apt" keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    uri=${SKQUEUE_FT_MIRROR:-$(mirror_uri)}
    [ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; set SKQUEUE_FT_MIRROR to a Debian archive URI"
    [ -r "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
    rm -rf "$apt"
    mkdir -p "$apt/etc/preferences.d" "$apt/etc/sources.list.d" \
        "$apt/etc/trusted.gpg.d" "$apt/state/lists/partial" "$apt/cache/archives/partial"
    : > "$apt/state/status"
    printf 'deb-src [signed-by=%s] %s %s main\n' "$keyring" "$uri" "$SUITE" \
        > "$apt/etc/sources.list"
    APT_OPTS=(-o "Dir::Etc=$apt/etc" -o "Dir::Etc::sourcelist=$apt/etc/sources.list"
        -o "Dir::Etc::sourceparts=$apt/etc/sources.list.d"
        -o "Dir::Etc::preferencesparts=$apt/etc/preferences.d"
        -o "Dir::State=$apt/state" -o "Dir::State::status=$apt/state/status"
        -o "Dir::Cache=$apt/cache" -o "Acquire::Languages=none"
        -o "APT::Sandbox::User=$(id -un)")
    say "fetching the python3.13 source package of $SUITE from $uri"
    apt-get "${APT_OPTS[@]}" -q update >>"$LOG" 2>&1 \
        || die "apt-get update with the private configuration failed; see $LOG"
    rm -rf "$DIR/_src"
    mkdir -p "$DIR/_src"
    (cd "$DIR/_src" && apt-get "${APT_OPTS[@]}" -q source python3.13) >>"$LOG" 2>&1 \
        || die "apt-get source python3.13 failed; see $LOG"
}

build() {
    local src
    src=$(find "$DIR/_src" -mindepth 1 -maxdepth 1 -type d -name 'python3.13-*' | head -n 1)
    [ -n "$src" ] && [ -x "$src/configure" ] || die "no unpacked python3.13 source in $DIR/_src; see $LOG"
    say "building $(basename "$src") with --disable-gil into $DIR (make -j$JOBS; several minutes; log: $LOG)"
    # Debian's site.py patch names a virtual environment's site-packages without the
    # free-threaded ABI suffix (python3.13, where venv and pip use python3.13t), so a
    # venv of this interpreter would not see what pip installs: put the suffix back.
    perl -0pi -e 's/(os\.path\.join\(prefix, "lib",\s*)"python%d\.%d" % sys\.version_info\[:2\](,\s*"site-packages"\))/$1"python%d.%d%s" % (*sys.version_info[:2], abi_thread)$2/' \
        "$src/Lib/site.py" || die "cannot edit $src/Lib/site.py"
    (
        cd "$src"
        ./configure --disable-gil --prefix="$DIR" --with-ensurepip=no
        make -j"$JOBS"
        make install
    ) >>"$LOG" 2>&1 || die "the build failed; the end of $LOG says why"
}

# Never wipe a directory this script did not create (SKQUEUE_FT_DIR could be mistyped).
if [ -d "$DIR" ] && [ ! -e "$DIR/.skqueue-ft-dir" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR exists, is not empty and was not made by this script; choose another SKQUEUE_FT_DIR"
fi
mkdir -p "$DIR"
touch "$DIR/.skqueue-ft-dir"
exec 9>"$DIR/.lock"
flock 9 || die "cannot lock $DIR/.lock"

if [ "${SKQUEUE_FT_REBUILD:-0}" != 1 ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$RECIPE" ] && works; then
    printf '%s\n' "$PY"
    exit 0
fi

command -v apt-get >/dev/null && command -v dpkg-query >/dev/null \
    || die "apt-get and dpkg-query are needed (a Debian-like system)"
rm -f "$STAMP"
rm -rf "$DIR/bin" "$DIR/lib" "$DIR/include" "$DIR/share"
: > "$LOG"
ensure_build_packages
fetch_source
build
if ! works; then
    die "the built interpreter $PY is not usable: $(diagnose | tr '\n' ';')"
fi
venv_works || die "a virtual environment of $PY does not see its site-packages (Debian's site.py patch changed?)"
rm -rf "$DIR/_src" "$DIR/_apt"
printf '%s\n' "$RECIPE" > "$STAMP"
say "ready: $("$PY" -c 'import sys; print(sys.version.split()[0])') free-threaded at $PY"
printf '%s\n' "$PY"
