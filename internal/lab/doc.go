// Package lab builds throw-away network labs out of Linux network namespaces
// for Keyhole's end-to-end tests (DESIGN.md §12).
//
// A lab is the topology of issue 3:
//
//	              internet (203.0.113.0/24, a bridge)
//	              203.0.113.10 "internet", 203.0.113.11 "internet2"
//	             /                                        \
//	home router 203.0.113.2                      site router 203.0.113.3
//	NAT + stateful firewall                      NAT + stateful firewall
//	LAN 192.0.2.0/24                             LAN 198.51.100.0/24 (bridge)
//	       |                                        |                 |
//	client 192.0.2.10                      gateway 198.51.100.10   app 198.51.100.20
//
// Every lab lives in namespaces named "kh" plus a random suffix, is torn down
// by t.Cleanup (also when the test fails or panics) and uses only TEST-NET
// addresses. Tests that build a lab skip unless they run as root with
// KEYHOLE_E2E=1.
//
// What does not live here: Keyhole's own components. A lab only provides the
// network; tests run the controller, relay, gateway and client in it, either
// in-process with [Lab.Run] or as commands with [Lab.Exec]. The one
// foreign component a lab runs for them is coturn, as an external TURN relay
// on an internet host ([Lab.StartCoturn]).
//
// The package is Linux-only; on other systems it holds only this comment.
package lab
