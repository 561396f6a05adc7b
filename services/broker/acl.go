package broker

import (
	"crypto/subtle"
	"log/slog"
	"net"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tinyscada/tinyscada/shared/credentials"
	"github.com/tinyscada/tinyscada/shared/lograte"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// users returns the users whose credentials the broker generates on its
// first start: one per role, plus the operator.
func users() []string {
	return append(topics.Names(topics.Roles()), credentials.Operator)
}

// publishRules is the access-control table under the topic tree t: the
// topic filters each user may publish to, a role's own subtree t.Svc(role)
// included. Anonymous clients publish nothing; everyone may subscribe to
// everything. Keep docs/topics.md in step with this table.
func publishRules(t topics.Tree) map[string][]string {
	rules := map[string][]string{
		string(topics.Broker): nil,                           // its state and heartbeats come from the in-process client
		string(topics.Poller): {t.AllData(), t.AllDevices()}, // the values come from the broker (valueHook)
		string(topics.Logger): {t.AllAcks(), t.Own(topics.Logger)},
		string(topics.Uplink): {t.Own(topics.Uplink), t.AllCmds()},
		string(topics.Health): {t.Own(topics.Health), t.AllCmds()},
		credentials.Operator:  {t.AllCmds()},
	}
	// Every role has its own svc/<role>/# subtree; the operator is not a
	// service and has none.
	for user := range rules {
		if user != credentials.Operator {
			rules[user] = append(rules[user], t.Svc(user))
		}
	}
	return rules
}

// mayPublish reports whether user (empty: anonymous) may publish on topic
// under rules (from publishRules). It is the one place that decides;
// everything not granted is denied: anonymous clients, $-topics, topics
// outside the prefix, and any topic not in the user's rules.
func mayPublish(rules map[string][]string, user, topic string) bool {
	if user == "" || strings.HasPrefix(topic, "$") {
		return false
	}
	for _, f := range rules[user] {
		if topics.Match(f, topic) {
			return true
		}
	}
	return false
}

// reservedClientID reports why a client id may not be used by user (empty:
// anonymous), or "" when it may. Ids starting with "tinyscada-<role>" are the
// roles' own sessions; another client taking one over would disconnect that
// role (and fire its last will), so only that role's user may use them.
// "inline" is mochi's in-process client.
func reservedClientID(id, user string) string {
	if id == mqtt.InlineClientId {
		return "client id reserved for the broker's inline client"
	}
	rest, ok := strings.CutPrefix(id, "tinyscada-")
	if !ok {
		return ""
	}
	if user != "" && (rest == user || strings.HasPrefix(rest, user+"-")) {
		return ""
	}
	return "client ids tinyscada-<role>[-…] are reserved for that role's credential"
}

// isLoopback reports whether a configured listen address (host:port) only
// accepts connections from this machine: a loopback IP or "localhost". An
// empty host, 0.0.0.0, ::, another IP or a host name are not loopback.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// accessHook is the mochi hook enforcing authentication and the publish
// rules.
type accessHook struct {
	mqtt.HookBase
	rules     map[string][]string // publishRules
	passwords map[string]string
	// local holds the ids of listeners (loopback TCP, unix socket) that
	// accept anonymous clients.
	local   map[string]bool
	limiter *lograte.Limiter
	log     *slog.Logger
}

func (h *accessHook) ID() string { return "tinyscada-access" }

func (h *accessHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

// OnConnectAuthenticate accepts a client that presents a known user name with
// its password, or no user name on a local listener; and refuses a client
// whose last will it could not publish itself, or that uses a reserved client
// id.
func (h *accessHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	if reason := h.authenticate(cl.Net.Listener, user, pk.Connect.Password); reason != "" {
		h.refuse(cl, user, reason)
		return false
	}
	if reason := reservedClientID(cl.ID, user); reason != "" {
		h.refuse(cl, user, reason)
		return false
	}
	if pk.Connect.WillFlag && !mayPublish(h.rules, user, pk.Connect.WillTopic) {
		h.refuse(cl, user, "last will on a topic this client may not publish: "+pk.Connect.WillTopic)
		return false
	}
	return true
}

// authenticate returns why the connection is refused, or "" if accepted.
func (h *accessHook) authenticate(listener, user string, password []byte) string {
	if user == "" {
		if !h.local[listener] {
			return "anonymous client on a non-loopback listener"
		}
		return ""
	}
	want, ok := h.passwords[user]
	if !ok {
		return "unknown user"
	}
	if subtle.ConstantTimeCompare(password, []byte(want)) != 1 {
		return "wrong password"
	}
	return ""
}

func (h *accessHook) refuse(cl *mqtt.Client, user, reason string) {
	host := cl.Net.Remote
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	}
	if h.limiter.Allow("connect\x00"+user+"\x00"+host+"\x00"+reason, time.Now()) {
		h.log.Warn("refused client", "client", cl.ID, "user", user, "remote", cl.Net.Remote,
			"listener", cl.Net.Listener, "reason", reason)
	}
}

// OnACLCheck allows every subscription, and a publish only as mayPublish
// says; a denied publish is logged at most once per client and topic a
// minute. (mochi then drops a QoS 0 message silently, and disconnects an
// MQTT 3 client that sent it with QoS 1 or 2.)
func (h *accessHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if !write {
		return true
	}
	user := string(cl.Properties.Username)
	if mayPublish(h.rules, user, topic) {
		return true
	}
	if h.limiter.Allow("publish\x00"+cl.ID+"\x00"+topic, time.Now()) {
		h.log.Warn("denied publish", "client", cl.ID, "user", user, "topic", topic, "remote", cl.Net.Remote)
	}
	return false
}
