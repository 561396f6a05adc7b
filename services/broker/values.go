package broker

import (
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/store"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// valueHook keeps the retained value topics, <prefix>/value/<device>/
// <point>, from the data messages the broker routes: the poller publishes
// each poll round once, on the data topic, and the broker derives a
// point's last value from it instead of taking a message per point from
// the poller (a message per reading was most of the poller's and the
// broker's work at field rates, for topics that nobody reads most of the
// time).
//
// A value is put in the retained store only when someone can see it: a
// changed value is published at once (retained, QoS 0) when a subscription
// matches its topic, and otherwise kept here until a SUBSCRIBE whose
// filter could match a value topic arrives; the stale points are then
// stored retained before mochi sends that subscriber the retained
// messages. mosquitto_sub thus sees every point's last value, as if each
// change had been published.
type valueHook struct {
	mqtt.HookBase
	srv        *mqtt.Server
	tree       topics.Tree
	dataPrefix string            // <prefix>/data/
	filter     string            // <prefix>/value/#: a subscription that overlaps it may see values
	units      map[string]string // device + "\x00" + point → the unit as a JSON string
	// gen counts subscription changes (subscribe, unsubscribe, a client
	// gone): a point's cached "has subscribers" is good while gen is.
	gen atomic.Uint64

	mu      sync.Mutex
	devices map[string]*valueDevice
	msg     store.Message // decoding scratch
}

type valueDevice struct {
	points map[string]*valuePoint
}

// valuePoint is one point's last value: the JSON text and the wall time
// of the first reading that had it.
type valuePoint struct {
	topic    string
	unit     string // JSON text; "" for none
	text     []byte
	t        int64
	retained bool   // the retained store has text and t
	gen      uint64 // gen when live was found; 0: not yet
	live     bool   // a subscription matches topic
}

func newValueHook(srv *mqtt.Server, cfg *config.Config) *valueHook {
	tree := topics.Tree{Prefix: cfg.TopicPrefix}
	h := &valueHook{
		srv:        srv,
		tree:       tree,
		dataPrefix: tree.Data(""),
		filter:     tree.AllValues(),
		units:      map[string]string{},
		devices:    map[string]*valueDevice{},
	}
	for dev, pts := range cfg.Poller.Units() {
		for pt, unit := range pts {
			b, _ := json.Marshal(unit) // a string always encodes
			h.units[dev+"\x00"+pt] = string(b)
		}
	}
	h.gen.Store(1)
	return h
}

func (h *valueHook) ID() string { return "tinyscada-values" }

func (h *valueHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublished, mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnDisconnect, mqtt.OnSessionEstablished, mqtt.OnClientExpired:
		return true
	}
	return false
}

// Any change of who is subscribed to what makes every point look again.
func (h *valueHook) OnSubscribed(*mqtt.Client, packets.Packet, []byte) { h.gen.Add(1) }
func (h *valueHook) OnUnsubscribed(*mqtt.Client, packets.Packet)       { h.gen.Add(1) }
func (h *valueHook) OnDisconnect(*mqtt.Client, error, bool)            { h.gen.Add(1) }
func (h *valueHook) OnSessionEstablished(*mqtt.Client, packets.Packet) { h.gen.Add(1) }
func (h *valueHook) OnClientExpired(*mqtt.Client)                      { h.gen.Add(1) }

// OnSubscribe stores the stale values retained before mochi looks for the
// retained messages of a filter that could match a value topic.
func (h *valueHook) OnSubscribe(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	for _, sub := range pk.Filters {
		if topics.Overlap(sub.Filter, h.filter) {
			h.retainStale()
			break
		}
	}
	return pk
}

func (h *valueHook) retainStale() {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now().Unix()
	for _, d := range h.devices {
		for _, p := range d.points {
			if p.retained {
				continue
			}
			h.srv.Topics.RetainMessage(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
				TopicName:   p.topic,
				Payload:     p.payload(),
				Origin:      mqtt.InlineClientId,
				Created:     now,
			})
			p.retained = true
		}
	}
	atomic.StoreInt64(&h.srv.Info.Retained, int64(h.srv.Topics.Retained.Len()))
}

// OnPublished takes the values of a data message (one that does not decode
// is the logger's to record; here it changes nothing).
func (h *valueHook) OnPublished(_ *mqtt.Client, pk packets.Packet) {
	device, ok := strings.CutPrefix(pk.TopicName, h.dataPrefix)
	if !ok || device == "" || strings.Contains(device, "/") {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if store.Decode(pk.Payload, &h.msg) != nil {
		return
	}
	d := h.devices[device]
	if d == nil {
		d = &valueDevice{points: map[string]*valuePoint{}}
		h.devices[device] = d
	}
	gen := h.gen.Load()
	var text [32]byte
	for i := range h.msg.Values {
		v := &h.msg.Values[i]
		b := v.AppendJSON(text[:0])
		p := d.points[string(v.Name)]
		if p == nil {
			name := string(v.Name)
			p = &valuePoint{topic: h.tree.Value(device, name), unit: h.units[device+"\x00"+name]}
			d.points[name] = p
		} else if string(p.text) == string(b) {
			continue
		}
		p.text = append(p.text[:0], b...)
		p.t = h.msg.Wall
		p.retained = false
		if p.gen != gen {
			s := h.srv.Topics.Subscribers(p.topic)
			p.live = len(s.Subscriptions) > 0 || len(s.Shared) > 0 || len(s.InlineSubscriptions) > 0
			p.gen = gen
		}
		if p.live {
			// Publish retains it too; the inline client skips the access check.
			if h.srv.Publish(p.topic, p.payload(), true, 0) == nil {
				p.retained = true
			}
		}
	}
}

// payload is the value topic's message: {"v":…,"t":…,"unit":"…"}.
func (p *valuePoint) payload() []byte {
	b := make([]byte, 0, 32+len(p.text)+len(p.unit))
	b = append(b, `{"v":`...)
	b = append(b, p.text...)
	b = append(b, `,"t":`...)
	b = strconv.AppendInt(b, p.t, 10)
	if p.unit != "" {
		b = append(b, `,"unit":`...)
		b = append(b, p.unit...)
	}
	return append(b, '}')
}
