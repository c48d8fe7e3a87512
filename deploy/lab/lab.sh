#!/usr/bin/env bash
# lab.sh builds Keyhole's e2e lab by hand, for people: the same topology as
# internal/lab (see its package doc), with fixed namespace names khlab-*.
#
#   sudo deploy/lab/lab.sh up [--nat eim|symmetric]   # build (rebuilds if up)
#   sudo deploy/lab/lab.sh down                       # remove; safe to repeat
#
# Then e.g.:  sudo ip netns exec khlab-client ping 203.0.113.10
#             sudo ip netns exec khlab-gateway getent hosts wiki.corp.internal
#             sudo ip netns exec khlab-site iptables -L KH-WAN-IN -v -x -n
#
# Keyhole in it (bin/keyhole from `make build`; run each in its own terminal):
#   sudo ip netns exec khlab-internet bin/keyhole controller --data /tmp/kh-c \
#        --listen 203.0.113.10:8443 --name 203.0.113.10     # relay on :3478
#   sudo ip netns exec khlab-internet bin/keyhole admin … (app wiki.corp.internal,
#        gateway token, user, policy: see the README walkthrough)
#   sudo ip netns exec khlab-gateway bin/keyhole gateway --controller \
#        https://203.0.113.10:8443 --token T --ca-fingerprint FP --data /tmp/kh-g
#   sudo ip netns exec khlab-client bin/keyhole login …; then
#   sudo ip netns exec khlab-client bin/keyhole connect wiki.corp.internal:80
#   sudo ip netns exec khlab-client bin/keyhole status   # path direct/relayed
#
# internet 203.0.113.10/.11 (bridge) | home 203.0.113.2, LAN 192.0.2.0/24,
# client 192.0.2.10 | site 203.0.113.3, LAN 198.51.100.0/24, gateway
# 198.51.100.10, app 198.51.100.20 (wiki.corp.internal, site only).
# Both routers NAT and drop every NEW connection from their WAN. Only
# TEST-NET addresses are used and nothing is created in the host namespace.
set -euo pipefail

P=khlab
HOSTS=(internet home client site gateway app)

down() {
	local h
	for h in "${HOSTS[@]}"; do
		ip netns del "$P-$h" 2>/dev/null || true
		rm -rf "/etc/netns/$P-$h"
	done
}

rules() { # rules eim|symmetric
	local masq="-j MASQUERADE"
	[ "$1" = symmetric ] && masq="-j MASQUERADE --random-fully"
	cat <<RULES
*mangle
-A PREROUTING -i wan0 -j MARK --set-mark 0x4b48
COMMIT
*nat
:KH-NAT - [0:0]
:KH-WAN-NEW - [0:0]
-A INPUT -i wan0 -j KH-WAN-NEW
-A POSTROUTING -m mark --mark 0x4b48 -j KH-WAN-NEW
-A POSTROUTING -o wan0 -j KH-NAT
-A KH-WAN-NEW -m comment --comment kh-accepted-new -j RETURN
-A KH-NAT $masq
COMMIT
*filter
:KH-WAN-IN - [0:0]
:KH-LAN-OUT - [0:0]
-A INPUT -i wan0 -j KH-WAN-IN
-A FORWARD -i wan0 -j KH-WAN-IN
-A FORWARD -i lan0 -o wan0 -j KH-LAN-OUT
-A KH-WAN-IN -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A KH-WAN-IN -m conntrack --ctstate NEW -m comment --comment kh-drop-new -j DROP
-A KH-WAN-IN -j DROP
COMMIT
RULES
}

up() { # up eim|symmetric
	local h nat=$1
	down
	for h in "${HOSTS[@]}"; do
		ip netns add "$P-$h"
		ip netns exec "$P-$h" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
		ip -n "$P-$h" link set lo up
	done
	ip netns exec $P-home sysctl -qw net.ipv4.ip_forward=1
	ip netns exec $P-site sysctl -qw net.ipv4.ip_forward=1

	ip -n $P-internet link add br0 type bridge forward_delay 0
	ip -n $P-internet link add home type veth peer name wan0 netns $P-home
	ip -n $P-internet link add site type veth peer name wan0 netns $P-site
	ip -n $P-internet link set home master br0
	ip -n $P-internet link set site master br0
	ip -n $P-internet addr add 203.0.113.10/24 dev br0
	ip -n $P-internet addr add 203.0.113.11/24 dev br0
	for d in br0 home site; do ip -n $P-internet link set $d up; done

	ip -n $P-home link add lan0 type veth peer name eth0 netns $P-client
	ip -n $P-home addr add 203.0.113.2/24 dev wan0
	ip -n $P-home addr add 192.0.2.1/24 dev lan0
	ip -n $P-home link set wan0 up
	ip -n $P-home link set lan0 up
	ip -n $P-client addr add 192.0.2.10/24 dev eth0
	ip -n $P-client link set eth0 up
	ip -n $P-client route add default via 192.0.2.1

	ip -n $P-site link add lan0 type bridge forward_delay 0
	ip -n $P-site link add gateway master lan0 type veth peer name eth0 netns $P-gateway
	ip -n $P-site link add app master lan0 type veth peer name eth0 netns $P-app
	ip -n $P-site addr add 203.0.113.3/24 dev wan0
	ip -n $P-site addr add 198.51.100.1/24 dev lan0
	for d in wan0 lan0 gateway app; do ip -n $P-site link set $d up; done
	ip -n $P-gateway addr add 198.51.100.10/24 dev eth0
	ip -n $P-app addr add 198.51.100.20/24 dev eth0
	for h in gateway app; do
		ip -n "$P-$h" link set eth0 up
		ip -n "$P-$h" route add default via 198.51.100.1
		mkdir -p "/etc/netns/$P-$h"
		printf '127.0.0.1\tlocalhost\n198.51.100.20\twiki.corp.internal\n' >"/etc/netns/$P-$h/hosts"
	done

	rules "$nat" | ip netns exec $P-home iptables-restore
	rules "$nat" | ip netns exec $P-site iptables-restore
	echo "lab up (nat $nat): namespaces $(ip netns list | grep -o "^$P-[a-z]*" | tr '\n' ' ')"
}

usage() { echo "usage: $0 up [--nat eim|symmetric] | down" >&2; exit 2; }

[ "$(id -u)" = 0 ] || { echo "$0: needs root" >&2; exit 1; }
case "${1:-}" in
up)
	nat=eim
	if [ $# -ge 2 ]; then
		[ "$2" = --nat ] && [ $# -eq 3 ] || usage
		case "$3" in eim | symmetric) nat=$3 ;; *) usage ;; esac
	fi
	trap 'echo "$0: up failed, tearing down" >&2; down' ERR
	up "$nat"
	;;
down) [ $# -eq 1 ] || usage; down ;;
*) usage ;;
esac
