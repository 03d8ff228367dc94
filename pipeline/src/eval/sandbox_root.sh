# The HumanEval sandbox's file system, run as root inside new mount, PID and network
# namespaces: an empty read-only root holding only /usr (read-only), the /bin /lib
# links, four device nodes, a fresh /proc (this PID namespace's processes only),
# private empty /tmp and /dev/shm, and the program's folder at /work; then the
# command is run in it, chrooted, from /work. Host files (/etc, /home, /root, other
# runs' data) are not there to read or write.
#   sh sandbox_root.sh FOLDER COMMAND...   (FOLDER holds work/ and root/)
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
base=$1; shift
root=$base/root
mount --make-rprivate /
mount -t tmpfs -o size=4m,mode=755 lsp-sandbox "$root"
for d in usr etc/alternatives; do
  [ -d "/$d" ] || continue
  mkdir -p "$root/$d"
  mount --rbind "/$d" "$root/$d"
  mount -o remount,bind,ro "$root/$d"
done
for link in bin lib lib64 sbin lib32 libx32; do
  if [ -L "/$link" ]; then ln -s "$(readlink "/$link")" "$root/$link";
  elif [ -d "/$link" ]; then mkdir -p "$root/$link"; mount --rbind "/$link" "$root/$link"; mount -o remount,bind,ro "$root/$link"; fi
done
mkdir -p "$root/dev/shm" "$root/tmp" "$root/proc" "$root/work"
for node in null zero random urandom; do
  touch "$root/dev/$node"
  mount --bind "/dev/$node" "$root/dev/$node"
done
mount -t tmpfs -o size=16m,mode=1777 tmp "$root/tmp"
mount -t tmpfs -o size=16m,mode=1777 shm "$root/dev/shm"
mount --bind "$base/work" "$root/work"
mount -t proc proc "$root/proc"
mount -o remount,ro,bind "$root"
cd "$root/work"
exec chroot "$root" /usr/bin/env -C /work "$@"
