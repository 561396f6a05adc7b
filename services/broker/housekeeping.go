package broker

import (
	"fmt"
	"reflect"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// housekeeping is the period of mochi's sweeps for expired sessions,
// inflight and retained messages and delayed wills: MQTT 5 expiries and
// will delays, in whole seconds. None of the stack's own clients uses them
// (retained messages never expire here: MaximumMessageExpiryInterval 0),
// so a sweep every 5 s, not every second, only makes an outside MQTT 5
// client's expired session or delayed will up to 5 s late.
const housekeeping = 5 * time.Second

// mochiTickers are the fields of mochi's event loop (mqtt.Server.loop)
// that tick its sweeps, each every second whatever the load: on an idle
// broker they were a wake-up of the process each second, and one more of
// the runtime's monitor thread, and each sweep copies the map it sweeps
// (at field rate, the thousand retained value topics).
var mochiTickers = []string{"clientExpiry", "inflightExpiry", "retainedExpiry", "willDelaySend"}

// slowHousekeeping sets the period of mochi's sweep tickers to d. mochi
// offers no option for them; they are unexported fields of the pinned
// version (go.mod), reached by reflection, and the broker's tests fail if
// an upgrade moves them. Call it before the server serves.
func slowHousekeeping(srv *mqtt.Server, d time.Duration) error {
	loop := reflect.ValueOf(srv).Elem().FieldByName("loop")
	if !loop.IsValid() || loop.Kind() != reflect.Pointer || loop.IsNil() {
		return fmt.Errorf("mochi's Server has no loop field of pointer type")
	}
	tickerType := reflect.TypeFor[*time.Ticker]()
	var tickers []*time.Ticker
	for _, name := range mochiTickers {
		f := loop.Elem().FieldByName(name)
		if !f.IsValid() || f.Type() != tickerType {
			return fmt.Errorf("mochi's event loop has no ticker %s", name)
		}
		t := *(**time.Ticker)(unsafe.Pointer(f.UnsafeAddr()))
		if t == nil {
			return fmt.Errorf("mochi's ticker %s is nil", name)
		}
		tickers = append(tickers, t)
	}
	for _, t := range tickers {
		t.Reset(d)
	}
	return nil
}
