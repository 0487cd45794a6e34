# Sourced by the setup scripts: ensure_packages WHAT PACKAGE... installs the
# Debian packages that are missing (as root), or says which are and fails.
ensure_packages() {
    local what="$1"
    shift
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "$what: missing Debian packages ${missing[*]} (run as root to install them)" >&2
        return 1
    fi
    echo "$what: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}
