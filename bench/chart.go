package bench

import (
	"fmt"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// chart draws the mode's TPS per second and, when replication was measured,
// each heartbeat's lag over time, one above the other, as a PNG.
func (m ModeResult) chart(path, subtitle string) error {
	tps := plot.New()
	tps.Title.Text = fmt.Sprintf("%s: %s\n%s", m.Mode, m.Writers, subtitle)
	tps.X.Label.Text = "seconds since the start"
	tps.Y.Label.Text = "transactions per second"
	tps.Y.Min = 0
	pts := make(plotter.XYs, len(m.TPSSeries))
	for i, n := range m.TPSSeries {
		pts[i] = plotter.XY{X: float64(i) + 0.5, Y: float64(n)}
	}
	if len(pts) > 0 {
		line, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		line.Color = plotutil.Color(0)
		tps.Add(line, plotter.NewGrid())
	}
	rows := [][]*plot.Plot{{tps}}

	if m.Lag != nil {
		lag := plot.New()
		lag.X.Label.Text = "seconds since the start (heartbeat commit)"
		lag.Y.Label.Text = "replication lag, ms"
		lag.Y.Min = 0
		lag.X.Min, lag.X.Max = tps.X.Min, tps.X.Max
		lag.Add(plotter.NewGrid())
		byPair := map[string]plotter.XYs{}
		var order []string
		for _, p := range m.Lags {
			k := p.From + " -> " + p.To
			if _, ok := byPair[k]; !ok {
				order = append(order, k)
			}
			byPair[k] = append(byPair[k], plotter.XY{X: p.At, Y: p.LagMs})
		}
		for i, k := range order {
			line, err := plotter.NewLine(byPair[k])
			if err != nil {
				return err
			}
			line.Color = plotutil.Color(i + 1)
			lag.Add(line)
			lag.Legend.Add(k, line)
		}
		lag.Legend.Top = true
		rows = append(rows, []*plot.Plot{lag})
	}

	img := vgimg.New(vg.Points(720), vg.Points(float64(300*len(rows)+40)))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(rows), Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(12)}
	canvases := plot.Align(rows, tiles, dc)
	for i := range rows {
		rows[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
