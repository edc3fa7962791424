# Sourced by the scripts: shared locations. The cargo target dir lives outside the clone so a
# fresh clone (CI) builds incrementally on a machine that built before.
export HOTSPOT_CACHE=${HOTSPOT_CACHE:-/var/cache/hotspot-mesh}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOTSPOT_CACHE/target}
export PATH=/usr/local/sbin:/usr/sbin:/sbin:$HOME/.cargo/bin:$PATH
export HOTSPOT_MOTO_SERVER=${HOTSPOT_MOTO_SERVER:-$HOTSPOT_CACHE/venv/bin/moto_server}
