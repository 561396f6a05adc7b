package broker

import "github.com/mochi-mqtt/server/v2/packets"

// ReleaseTestTables lets the collector free what mochi builds at init for
// its own tests, which nothing here reads: its packets package builds
// TPacketData, the codec's test cases (368 KB of heap, GODEBUG=inittrace=1
// tinyscada version), in every process of the binary, the broker's or not,
// and keeps it for the process's lifetime. Every role calls it first.
func ReleaseTestTables() { packets.TPacketData = nil }
