package membership

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/catalog"
)

// walBudgetEvery is how often the WAL kept for each peer is checked.
const walBudgetEvery = 5 * time.Second

// WAL budget states of a peer.
const (
	BudgetOK      = "ok"
	BudgetWarning = "warning" // over 80% while the peer is down
	BudgetOver    = "over"    // over 100% while the peer is down
)

// walUse is the WAL one peer's slot keeps on this node.
type walUse struct {
	Retained int64
	Ratio    float64
	State    string
	parted   bool // a part was committed for it
}

// walBudgetLoop watches the WAL the slots of peers keep here. While a peer
// is down its slot keeps WAL; at 80% of the budget this node warns, at 100%
// it parts the peer through consensus (policy part) so the WAL is released,
// or keeps alerting (policy alert).
func (s *Service) walBudgetLoop(ctx context.Context) {
	t := time.NewTicker(walBudgetEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.checkWALBudget(ctx); err != nil && ctx.Err() == nil {
			s.log.Debug("check the WAL budget", "err", err)
		}
	}
}

func (s *Service) checkWALBudget(ctx context.Context) error {
	cons, _, _ := s.group()
	if cons == nil {
		return nil
	}
	members := cons.fsm.current().Nodes
	rows, err := s.pool.Query(ctx, `SELECT slot_name, pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint
		FROM pg_catalog.pg_replication_slots
		WHERE database = pg_catalog.current_database() AND pg_catalog.starts_with(slot_name::text, $1) AND restart_lsn IS NOT NULL`,
		catalog.ReplName(s.dbOID, ""))
	if err != nil {
		return err
	}
	type slot struct {
		Name     string
		Retained int64
	}
	slots, err := pgx.CollectRows(rows, pgx.RowToStructByPos[slot])
	if err != nil {
		return err
	}
	budget := float64(s.cfg.MaxPeerWAL)
	seen := map[string]bool{}
	for _, sl := range slots {
		peer := strings.TrimPrefix(sl.Name, catalog.ReplName(s.dbOID, ""))
		n, ok := members[peer]
		if !ok || n.State == catalog.StateParted || peer == s.cfg.NodeName {
			continue
		}
		seen[peer] = true
		use := walUse{Retained: sl.Retained, Ratio: float64(sl.Retained) / budget, State: BudgetOK}
		s.met.retained.WithLabelValues(peer).Set(float64(sl.Retained))
		s.met.budgetUsed.WithLabelValues(peer).Set(use.Ratio)
		l, _ := s.liveOf(peer)
		s.gmu.Lock()
		prev := s.budget[peer]
		s.gmu.Unlock()
		use.parted = prev.parted
		if l.State == LiveDown {
			switch {
			case use.Ratio >= 1:
				use.State = BudgetOver
			case use.Ratio >= 0.8:
				use.State = BudgetWarning
			}
		}
		if use.State != prev.State && use.State != BudgetOK {
			s.log.Warn("WAL kept for a down peer", "peer", peer, "retained_bytes", use.Retained,
				"budget_bytes", s.cfg.MaxPeerWAL, "used", fmt.Sprintf("%.0f%%", 100*use.Ratio), "policy", s.cfg.OnWALBudget)
		}
		if use.State == BudgetOver && s.cfg.OnWALBudget == OnWALBudgetPart && !use.parted {
			reason := fmt.Sprintf("WAL budget exceeded: its slot on %s kept %d bytes of WAL while it was down (budget %d)",
				s.cfg.NodeName, use.Retained, s.cfg.MaxPeerWAL)
			if _, err := s.propose(ctx, command{Op: opPart, Node: groupNode{Name: peer}, Reason: reason}); err != nil {
				s.log.Warn("could not part the peer over the WAL budget", "peer", peer, "err", err)
			} else {
				use.parted = true
				s.met.autoParts.Inc()
				s.log.Warn("parted a down peer over the WAL budget", "peer", peer, "reason", reason)
			}
		}
		s.gmu.Lock()
		s.budget[peer] = use
		s.gmu.Unlock()
	}
	s.gmu.Lock()
	for peer := range s.budget {
		if !seen[peer] {
			delete(s.budget, peer)
			s.met.retained.DeleteLabelValues(peer)
			s.met.budgetUsed.DeleteLabelValues(peer)
		}
	}
	s.gmu.Unlock()
	return nil
}
