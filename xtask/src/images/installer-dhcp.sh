#!/bin/sh
# udhcpc event script of the install environment: configure the lease, keep what the
# installer needs (address, server identifier) in /tmp/dhcp.env.
case "$1" in
  bound | renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in ${router:-}; do ip route replace default via "$r" dev "$interface" && break; done
    printf 'ip=%s\nserverid=%s\n' "$ip" "${serverid:-}" >/tmp/dhcp.env
    ;;
  deconfig)
    ip addr flush dev "$interface"
    ;;
esac
exit 0
