#!/bin/sh
# Stages a roomkey binary and exactly the shared libraries it links (as `ldd` resolves them
# on this machine) into docker/rootfs/, the only thing the image is built from. The image
# is `FROM scratch`: no base image to pull, so it builds without Docker Hub.
#
#   docker/stage.sh [BINARY]          # default: target/release/roomkey
#   docker build -f docker/Dockerfile -t roomkey-sim .
set -eu
cd "$(dirname "$0")/.."
bin=${1:-target/release/roomkey}
if [ ! -x "$bin" ]; then
  echo "stage.sh: $bin is not an executable; build it first (cargo build --release --locked)" >&2
  exit 1
fi
rm -rf docker/rootfs
# image/: the root file system; state/: the simulator's state directory, copied in owned by
# its user (a COPY --chown of a directory that already exists would leave it root's).
root=docker/rootfs/image
state=docker/rootfs/state
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/var/lib" "$root/tmp" "$state"
echo "roomkey sim state: device secrets and host keys of simulated devices" >"$state/README"
cp "$bin" "$root/usr/local/bin/roomkey"
strip "$root/usr/local/bin/roomkey" 2>/dev/null || true
# Every library the loader maps, and the loader itself, at the path the binary names.
ldd "$bin" | awk '
  $2 == "=>" && $3 ~ /^\// { print $3 }
  $1 ~ /^\// { print $1 }
' | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# The simulator runs as an unprivileged user; the name resolves through these files.
printf 'root:x:0:0:root:/root:/sbin/nologin\nroomkey:x:10001:10001:roomkey simulator:/var/lib/roomkey-sim:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nroomkey:x:10001:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
echo "staged $(du -sh docker/rootfs | cut -f1) in docker/rootfs:"
find "$root" -type f | sed "s|^$root||" | sort
