package apply

import (
	"context"
	"sync"
)

// pauser lets the join procedure hold every applier between transactions
// (DESIGN "Join", step 4). Appliers bracket each unit of work with
// enter/leave; pause returns once none is inside one.
type pauser struct {
	mu      sync.Mutex
	paused  bool
	gen     uint64
	resumed chan struct{} // closed when a pause ends
	active  int
	idle    chan struct{} // signalled when active drops to zero
}

func newPauser() *pauser {
	return &pauser{idle: make(chan struct{}, 1)}
}

func (p *pauser) enter(ctx context.Context) error {
	p.mu.Lock()
	for p.paused {
		ch := p.resumed
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
		p.mu.Lock()
	}
	p.active++
	p.mu.Unlock()
	return nil
}

func (p *pauser) leave() {
	p.mu.Lock()
	p.active--
	if p.active == 0 {
		signal(p.idle)
	}
	p.mu.Unlock()
}

// pause stops new work and waits for work in progress to end. It returns a
// generation to pass to resume.
func (p *pauser) pause(ctx context.Context) (uint64, error) {
	p.mu.Lock()
	if !p.paused {
		p.paused = true
		p.resumed = make(chan struct{})
	}
	p.gen++
	gen := p.gen
	for p.active > 0 {
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			p.resume(gen)
			return 0, ctx.Err()
		case <-p.idle:
		}
		p.mu.Lock()
	}
	p.mu.Unlock()
	return gen, nil
}

// resume ends the pause of generation gen; a later pause is not ended by
// the resume of an earlier one.
func (p *pauser) resume(gen uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused && gen == p.gen {
		p.paused = false
		close(p.resumed)
	}
}

// generation is the generation of the latest pause.
func (p *pauser) generation() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen
}

func (p *pauser) isPaused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}
