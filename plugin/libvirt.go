package plugin

import (
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"libvirt.org/go/libvirt"
)

var eventLoopOnce sync.Once

// startEventLoop registers and runs libvirt's default event loop once per
// process; lifecycle and monitor events are delivered from it.
func startEventLoop(log logrus.FieldLogger) {
	eventLoopOnce.Do(func() {
		if err := libvirt.EventRegisterDefaultImpl(); err != nil {
			log.WithError(err).Fatal("libvirt event loop")
		}
		go func() {
			for {
				if err := libvirt.EventRunDefaultImpl(); err != nil {
					log.WithError(err).Warn("libvirt event loop iteration")
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	})
}

// lifecycleFunc receives domain lifecycle events. It runs on libvirt's
// event loop and must not block.
type lifecycleFunc func(LifecycleEvent)

// libvirtConn keeps one connection to the local libvirtd. When libvirtd
// restarts (close callback or a failed keepalive) it reconnects with backoff
// and registers the lifecycle callback again, then calls onConnect so the
// daemon can rescan its domains (kubevirt does the same in
// pkg/virt-launcher/virtwrap/cli/libvirt.go).
type libvirtConn struct {
	uri       string
	log       logrus.FieldLogger
	onEvent   lifecycleFunc
	onConnect func()

	mu     sync.Mutex
	conn   *libvirt.Connect
	lost   chan struct{}
	closed bool
}

func newLibvirtConn(uri string, log logrus.FieldLogger, onEvent lifecycleFunc, onConnect func()) *libvirtConn {
	return &libvirtConn{uri: uri, log: log, onEvent: onEvent, onConnect: onConnect, lost: make(chan struct{}, 1)}
}

// run connects and keeps the connection until stop is closed.
func (l *libvirtConn) run(stop <-chan struct{}) {
	startEventLoop(l.log)
	backoff := 100 * time.Millisecond
	for {
		if err := l.connect(); err != nil {
			l.log.WithError(err).Warnf("connecting to %s; retrying in %v", l.uri, backoff)
			select {
			case <-stop:
				return
			case <-time.After(backoff):
			}
			if backoff < 2*time.Second {
				backoff *= 2
			}
			continue
		}
		backoff = 100 * time.Millisecond
		l.log.Infof("connected to %s", l.uri)
		if l.onConnect != nil {
			go l.onConnect()
		}
		// Wait until the connection is lost.
		tick := time.NewTicker(time.Second)
	wait:
		for {
			select {
			case <-stop:
				tick.Stop()
				l.close()
				return
			case <-l.lost:
				break wait
			case <-tick.C:
				l.mu.Lock()
				c := l.conn
				l.mu.Unlock()
				if c == nil {
					break wait
				}
				if alive, err := c.IsAlive(); err != nil || !alive {
					break wait
				}
			}
		}
		tick.Stop()
		l.log.Warnf("lost connection to %s; reconnecting", l.uri)
		l.close()
	}
}

func (l *libvirtConn) connect() error {
	c, err := libvirt.NewConnect(l.uri)
	if err != nil {
		return err
	}
	if err := c.SetKeepAlive(2, 3); err != nil {
		l.log.WithError(err).Debug("keepalive")
	}
	if err := c.RegisterCloseCallback(func(_ *libvirt.Connect, reason libvirt.ConnectCloseReason) {
		notify(l.lost)
	}); err != nil {
		c.Close()
		return fmt.Errorf("register close callback: %w", err)
	}
	if _, err := c.DomainEventLifecycleRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventLifecycle) {
		var kind LifecycleKind
		switch ev.Event {
		case libvirt.DOMAIN_EVENT_DEFINED:
			kind = EventDefined
		case libvirt.DOMAIN_EVENT_UNDEFINED:
			kind = EventUndefined
		case libvirt.DOMAIN_EVENT_STOPPED:
			kind = EventStopped
		case libvirt.DOMAIN_EVENT_SHUTDOWN:
			if ev.Detail != int(libvirt.DOMAIN_EVENT_SHUTDOWN_GUEST) {
				return
			}
			kind = EventGuestShutdown
		default:
			return
		}
		name, err := d.GetName()
		if err != nil {
			return
		}
		uuid, _ := d.GetUUIDString()
		shutdown := kind == EventStopped && ev.Detail == int(libvirt.DOMAIN_EVENT_STOPPED_SHUTDOWN)
		l.onEvent(LifecycleEvent{Kind: kind, Name: name, UUID: uuid, Shutdown: shutdown})
	}); err != nil {
		c.Close()
		return fmt.Errorf("register lifecycle events: %w", err)
	}
	l.mu.Lock()
	l.conn = c
	l.mu.Unlock()
	return nil
}

func (l *libvirtConn) close() {
	l.mu.Lock()
	c := l.conn
	l.conn = nil
	l.mu.Unlock()
	if c != nil {
		_ = c.UnregisterCloseCallback()
		_, _ = c.Close()
	}
}

// get returns the current connection or ErrNotConnected.
func (l *libvirtConn) get() (*libvirt.Connect, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return nil, ErrNotConnected
	}
	return l.conn, nil
}
