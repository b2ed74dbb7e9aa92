package containerd

import (
	"context"
	"errors"
	"fmt"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/typeurl/v2"
)

// Backoff between subscriptions after the event stream broke (containerd restarting):
// short at first, so a restart costs a second, capped so a daemon that stays down is not
// hammered.
const (
	eventsBackoffMin = 100 * time.Millisecond
	eventsBackoffMax = 30 * time.Second
	// eventsStable is how long a subscription must have lived for the backoff to start
	// again from the minimum.
	eventsStable = time.Minute
)

// Events reports the names of image records created, updated or deleted in the store's
// namespace ("repo:tag", "repo@sha256:…", "sha256:<config>"), as containerd announces
// them, until ctx is done; then both channels are closed.
//
// containerd ends an event stream when it restarts, and events published while no one is
// subscribed are lost. Events subscribes again, with backoff, and once the daemon answers
// again sends "": changes may have been missed, look at everything. Each break is sent on
// the error channel (dropped if the last one was not read yet); they are not fatal.
func (s *Store) Events(ctx context.Context) (<-chan string, <-chan error) {
	names := make(chan string, 64)
	errs := make(chan error, 1)
	// Filters are ORed, the conditions within one ANDed.
	filter := fmt.Sprintf(`namespace==%q,topic~="^/images/(create|update|delete)$"`, s.namespace)
	go func() {
		defer close(errs)
		defer close(names)
		backoff := eventsBackoffMin
		resubscribe := false
		for ctx.Err() == nil {
			sctx, cancel := context.WithCancel(ctx)
			envelopes, serrs := s.client.EventService().Subscribe(sctx, filter)
			started := time.Now()
			if resubscribe && s.answers(ctx) {
				select {
				case names <- "":
				case <-ctx.Done():
				}
			}
			err := s.forward(sctx, envelopes, serrs, names)
			cancel()
			if ctx.Err() != nil {
				return
			}
			select {
			case errs <- fmt.Errorf("containerd's image events: %w", grpcCause(err)):
			default:
			}
			if time.Since(started) > eventsStable {
				backoff = eventsBackoffMin
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(backoff*2, eventsBackoffMax)
			resubscribe = true
		}
	}()
	return names, errs
}

// errEventsEnded: the stream ended without an error (containerd closed it).
var errEventsEnded = errors.New("stream ended")

// forward sends the image name of each event until the subscription fails, and returns why.
func (s *Store) forward(ctx context.Context, envelopes <-chan *events.Envelope, serrs <-chan error, names chan<- string) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err, ok := <-serrs:
			if !ok || err == nil {
				return errEventsEnded
			}
			return err
		case env := <-envelopes:
			name := imageName(env)
			if name == "" {
				continue
			}
			select {
			case names <- name:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// answers reports whether the daemon answers again, so "" is sent only once a new
// subscription can actually be in place.
func (s *Store) answers(ctx context.Context) bool {
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := s.client.Version(vctx)
	return err == nil
}

// imageName is the record name an /images/* event is about, "" for anything else.
func imageName(env *events.Envelope) string {
	if env == nil || env.Event == nil {
		return ""
	}
	ev, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		return ""
	}
	switch e := ev.(type) {
	case *eventtypes.ImageCreate:
		return e.Name
	case *eventtypes.ImageUpdate:
		return e.Name
	case *eventtypes.ImageDelete:
		return e.Name
	}
	return ""
}
