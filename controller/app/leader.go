package app

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1 "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/controller"
)

// ErrLostLease is returned by Run when the leader lease was lost; the
// process must exit so it never allocates beside a new leader.
var ErrLostLease = errors.New("lost the leader lease")

// runElected runs run while this process holds the leader Lease, until ctx
// is done (nil, or run's error) or the lease is lost (ErrLostLease).
// watchdog, the /healthz check, fails while a lease this process leads is
// not renewed. On shutdown the lease is released only once run has
// returned, its syncs in flight finished, or after syncTimeout (and 5s).
func runElected(ctx context.Context, cfg LeaderElection, client coordinationv1.CoordinationV1Interface,
	watchdog *leaderelection.HealthzAdaptor, syncTimeout time.Duration, m *controller.Metrics,
	run func(context.Context) error) error {
	logger := klog.FromContext(ctx)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The identity starts with the pod's name: kubectl aliasip finds the
	// leader's pod by it. The UUID keeps it unique.
	id := cfg.PodName + "_" + uuid.NewString()
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.Lease.Namespace, Name: cfg.Lease.Name},
		Client:     client,
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	var runErr error
	done := make(chan struct{})
	var started atomic.Bool
	// The elector runs on a context of its own: on shutdown the lease is
	// released (ReleaseOnCancel) only once the controller has stopped and
	// its syncs in flight have finished, so a new leader never rebuilds
	// while our cloud operations still run.
	leCtx, leCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer leCancel()
	go func() {
		<-ctx.Done()
		if started.Load() {
			select {
			case <-done:
			case <-time.After(syncTimeout + 5*time.Second):
				logger.Info("Syncs still running after the sync timeout; releasing the lease anyway")
			}
		}
		leCancel()
	}()
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   cfg.LeaseDuration,
		RenewDeadline:   cfg.RenewDeadline,
		RetryPeriod:     cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            cfg.Lease.Name,
		WatchDog:        watchdog,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leaderCtx context.Context) {
				started.Store(true)
				defer close(done)
				logger.Info("Became leader", "identity", id)
				m.Leader.Set(1)
				// Stop on shutdown (ctx) or on a lost lease (leaderCtx).
				runCtx, stop := context.WithCancel(leaderCtx)
				defer stop()
				defer context.AfterFunc(ctx, stop)()
				runErr = run(runCtx)
			},
			OnStoppedLeading: func() {
				m.Leader.Set(0)
				if ctx.Err() == nil {
					cancel(ErrLostLease)
				}
			},
			OnNewLeader: func(identity string) {
				if identity != id {
					logger.Info("Following leader", "leader", identity)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	le.Run(leCtx)
	if cause := context.Cause(ctx); errors.Is(cause, ErrLostLease) {
		return ErrLostLease
	}
	// runErr is run's to write until done is closed: read it only then
	// (run may still be going after the sync timeout, or never started).
	select {
	case <-done:
		return runErr
	default:
		return nil
	}
}
