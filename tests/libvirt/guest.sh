# Runs inside the test guest (/init runs it with /bin/sh; output goes to ttyS0).
# Two guests on one vnet segment: leases 10.0.2.15 and 10.0.2.16 (vnet's first two),
# each pings the gateway and then the other one. On success it prints VNET-PEER-OK and
# keeps answering pings until the host destroys the domain (bounded: 10 min).
ip link set eth0 up || exit 10
udhcpc -i eth0 -n -q -t 20 -T 2 || exit 11
ME=$(ip -4 addr show eth0 | sed -n 's/.*inet \([0-9.]*\)\/.*/\1/p')
echo "VNET-LEASE $ME"
ip -4 addr show eth0
case "$ME" in
    10.0.2.15) PEER=10.0.2.16 ;;
    10.0.2.16) PEER=10.0.2.15 ;;
    *) echo "VNET-FAIL unexpected address '$ME'"; exit 12 ;;
esac
ping -c 2 -W 2 10.0.2.2 || { echo "VNET-FAIL gateway"; exit 13; }
echo "VNET-GATEWAY-OK"
# The peer may still be booting: wait for it (up to ~180 s), then a real ping.
start=$(date +%s)
until ping -c 1 -W 1 "$PEER" >/dev/null 2>&1; do
    [ $(( $(date +%s) - start )) -ge 180 ] && { echo "VNET-FAIL peer $PEER never answered"; exit 14; }
    sleep 1
done
ping -c 3 -W 2 "$PEER" || { echo "VNET-FAIL peer $PEER"; exit 15; }
echo "VNET-PEER-OK $ME -> $PEER"
sleep 600
