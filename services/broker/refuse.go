package broker

import (
	"errors"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// refuseHook is the mochi hook for what mochi would otherwise take without
// a word: a packet over broker.max_packet_size (mochi checks the fixed
// header's remaining length against Capabilities.MaximumPacketSize before
// it reads the body, and drops the connection; this hook logs it and tells
// MQTT 5 clients the limit).
type refuseHook struct {
	mqtt.HookBase
	access    *accessHook // its limiter and log
	maxPacket uint32
}

func (h *refuseHook) ID() string { return "tinyscada-refuse" }

func (h *refuseHook) Provides(b byte) bool {
	return b == mqtt.OnPacketEncode || b == mqtt.OnDisconnect
}

// OnPacketEncode puts the packet size limit in a successful CONNACK, so an
// MQTT 5 client knows it [MQTT-3.2.2-15] (mochi does not send it; MQTT
// 3.1.1 has no such property and the encoder leaves it out).
func (h *refuseHook) OnPacketEncode(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode < packets.ErrUnspecifiedError.Code {
		pk.Properties.MaximumPacketSize = h.maxPacket
	}
	return pk
}

// OnDisconnect logs a client dropped for a packet over the limit, at most
// once a minute per client.
func (h *refuseHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if !errors.Is(err, packets.ErrPacketTooLarge) {
		return
	}
	if h.access.limiter.Allow("too large\x00"+cl.ID, time.Now()) {
		h.access.log.Warn("refused packet", "client", cl.ID, "user", string(cl.Properties.Username),
			"remote", cl.Net.Remote, "reason", "larger than broker.max_packet_size; client disconnected",
			"max_packet_size", h.maxPacket)
	}
}
