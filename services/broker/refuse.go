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
// MQTT 5 clients the limit), and a publish to a topic mochi does not route
// ($SYS/…, a wildcard), which mochi drops before the access check without
// acknowledging it, so that a QoS 1 publisher waited for good.
type refuseHook struct {
	mqtt.HookBase
	srv       *mqtt.Server
	access    *accessHook // its limiter and log, and the publish rules
	maxPacket uint32
}

func (h *refuseHook) ID() string { return "tinyscada-refuse" }

func (h *refuseHook) Provides(b byte) bool {
	return b == mqtt.OnPacketRead || b == mqtt.OnPacketEncode || b == mqtt.OnDisconnect
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

// OnPacketRead denies a publish to a topic mochi does not route as any
// denied publish: logged (through the access hook's OnACLCheck, which
// denies every $-topic), dropped at QoS 0, refused with "not authorized"
// for an MQTT 5 client, and the disconnection of an MQTT 3 client that
// sent it with QoS 1 or 2. Other packets pass.
func (h *refuseHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || mqtt.IsValidFilter(pk.TopicName, true) {
		return pk, nil
	}
	if h.access.OnACLCheck(cl, pk.TopicName, true) {
		// A topic name with a wildcard that the user's rules match: not
		// a topic at all [MQTT-3.3.2-2].
		if h.access.limiter.Allow("publish\x00"+cl.ID+"\x00"+pk.TopicName, time.Now()) {
			h.access.log.Warn("denied publish", "client", cl.ID, "user", string(cl.Properties.Username),
				"topic", pk.TopicName, "remote", cl.Net.Remote, "reason", "wildcard in a topic name")
		}
	}
	switch {
	case pk.FixedHeader.Qos == 0:
		return pk, nil // mochi drops it
	case cl.Properties.ProtocolVersion == 5:
		ack := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Puback},
			PacketID:    pk.PacketID,
			ReasonCode:  packets.ErrNotAuthorized.Code,
			Properties:  packets.Properties{ReasonString: packets.ErrNotAuthorized.Reason},
		}
		if pk.FixedHeader.Qos == 2 {
			ack.FixedHeader.Type = packets.Pubrec
		}
		_ = cl.WritePacket(ack) // a write error ends the connection anyway
		return pk, nil          // mochi drops it
	default:
		// As mochi does for a denied publish; ErrRejectPacket then ends
		// the client's read loop (and sends its last will, as there).
		_ = h.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
		return pk, packets.ErrRejectPacket
	}
}
