#!/bin/busybox sh
# gb10-provision install environment: load the drivers for the hardware present, bring a
# NIC up by DHCP, fetch this host's install script from the provisioning server and run
# it. Kernel arguments: gb10.mac=MAC (the NIC to use; else each NIC in turn),
# gb10.server=HOST[:PORT] (else the DHCP server identifier, port 80).
/bin/busybox mkdir -p /dev /proc /sys /tmp /run /mnt
/bin/busybox mount -t devtmpfs dev /dev
exec 0</dev/console 1>/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
# The kernel loads modules on demand (filesystems, crc32c) through this helper.
echo /usr/sbin/modprobe >/proc/sys/kernel/modprobe
echo "gb10-installer: up, kernel $(uname -r) $(uname -m)"

arg() {
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1="*) echo "${w#*=}" && return ;; esac
  done
}
want_mac=$(arg gb10.mac | tr A-F a-f | tr - :)
server=$(arg gb10.server)

# Drivers for what is present, by modalias as udev's coldplug would; a few passes, as
# drivers create devices of their own (virtio-pci, then virtio-net).
for pass in 1 2 3; do
  modprobe -a -q -b $(cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u) 2>/dev/null
  sleep 0.2
done

# The NIC: the one with gb10.mac, else each Ethernet NIC in turn (waits up to 20 s for
# NICs to appear).
nics() {
  for n in /sys/class/net/*; do
    [ "$(cat "$n/type" 2>/dev/null)" = 1 ] || continue
    if [ -z "$want_mac" ] || [ "$(cat "$n/address")" = "$want_mac" ]; then
      echo "${n##*/}"
    fi
  done
}
i=0
while [ -z "$(nics)" ] && [ $i -lt 100 ]; do
  sleep 0.2
  i=$((i + 1))
done
lease=""
for nic in $(nics); do
  ip link set "$nic" up
  if udhcpc -i "$nic" -n -q -t 10 -T 2 -s /etc/gb10-dhcp.sh; then
    lease=$nic
    break
  fi
  ip link set "$nic" down
done
if [ -z "$lease" ]; then
  echo "gb10-installer: no DHCP lease on any NIC ($(ls /sys/class/net | tr '\n' ' ')); loaded drivers:"
  cut -d' ' -f1 /proc/modules | tr '\n' ' '
else
  . /tmp/dhcp.env
  mac=$(cat "/sys/class/net/$lease/address")
  [ -n "$server" ] || server=$serverid
  export GB10_IFACE=$lease GB10_IP=$ip GB10_MAC=$mac GB10_SERVER=$server
  echo "gb10-installer: lease $ip on $lease ($mac), server $server"
  url="http://$server/install/$mac"
  if curl -sS -f -m 30 --retry 5 --retry-delay 2 --retry-connrefused -o /tmp/install.sh "$url"; then
    echo "gb10-installer: running $url"
    sh /tmp/install.sh
    echo "gb10-installer: the install script returned ($?)"
  else
    echo "gb10-installer: could not fetch $url"
    curl -sS -m 10 -o /dev/null --data-urlencode "mac=$mac" --data-urlencode "phase=failed" \
      --data-urlencode "message=install environment: could not fetch $url" "http://$server/heartbeat"
  fi
fi
# PID 1 must not exit: a shell on the console, then wait.
setsid cttyhack sh
while :; do sleep 3600; done
