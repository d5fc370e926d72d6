defmodule Tube.Bench.Report do
  @moduledoc false
  # What a bench run leaves behind: the terminal table, the JSON file and
  # the PNG chart (drawn by gnuplot when it is installed).

  import Tube.Bench.Suite, only: [fmt: 1]

  @names %{tube: "tube", tube_batch: "tube batch", dist: "Erlang dist", unix: "Unix gen_tcp", udp: "UDP loopback"}

  @doc "The side-by-side tables as text."
  def table(res) do
    tput = res.throughput
    dist = Enum.find(tput, &(&1.transport == :dist))

    rows =
      for t <- tput, s <- t.sizes do
        d = dist && Enum.find(dist.sizes, &(&1.size == s.size))
        ratio = if d && d.rx_pps > 0, do: "#{fmt(s.rx_pps / d.rx_pps)}x", else: "-"
        [@names[t.transport], "#{s.size}", fmt(s.rx_pps / 1.0e6), fmt(s.rx_mbps), fmt(s.tx_pps / 1.0e6), "#{fmt(s.drop_pct)}%", ratio]
      end

    rtt = for t <- tput, do: [@names[t.transport], fmt(t.rtt.p50_us), fmt(t.rtt.p99_us), fmt(t.rtt.min_us)]

    scale =
      for l <- res.scale.levels do
        [
          "#{l.tubes}",
          fmt(l.agg_rx_pps / 1.0e6),
          "#{fmt(l.agg_drop_pct)}%",
          fmt(l.handshake_p50_ms),
          fmt(l.handshake_p99_ms),
          pair(l.idle_cpu_pct),
          pair(Enum.map(l.memfd_mapped_per_tube, &(&1 / 1024))),
          pair(Enum.map(l.beam_bytes_per_tube, &(&1 && &1 / 1024)))
        ]
      end

    Enum.join(
      [
        "One-way throughput (receiver's count in a fixed window; drops = sent - received; the median of #{rounds(res)} interleaved rounds)",
        grid(["transport", "bytes", "Mpps rx", "MB/s rx", "Mpps tx", "drops", "vs dist"], rows),
        "",
        "64-byte ping-pong round trip (us)",
        grid(["transport", "p50", "p99", "min"], rtt),
        "",
        "Tubes at scale (64-byte packets; per-node figures are bench / peer; BEAM KiB/tube is the slope from 1 tube)",
        grid(["tubes", "agg Mpps", "drops", "open p50 ms", "open p99 ms", "idle CPU %", "shared KiB/tube", "BEAM KiB/tube"], scale)
      ] ++ failure(res.scale.failed) ++ machine(res[:machine]),
      "\n"
    )
  end

  # The host's state over the rounds (Tube.Bench.Machine): how much the
  # machine itself moved while the figures above were taken.
  defp machine(%{summary: %{} = m, rounds: rounds}) do
    cell = fn %{median: med, min: lo, max: hi} -> "#{fmt(med)} [#{fmt(lo)}-#{fmt(hi)}]" end

    [
      "",
      "The machine over the #{length(rounds)} rounds, no tube code (ring-bench --machine): median [min-max]",
      grid(["CPU0 Mops", "CPU1 Mops", "copies CPU0 M/s", "copies CPU1 M/s", "line round trip ns"],
        [[cell.(m.cpu0_mops), cell.(m.cpu1_mops), cell.(m.copy0_mops), cell.(m.copy1_mops), cell.(m.line_rtt_ns)]])
    ]
  end

  defp machine(_), do: []

  defp rounds(%{throughput: [t | _]}), do: t.sizes |> hd() |> Map.get(:runs, [nil]) |> length()
  defp rounds(_), do: 0

  defp failure(nil), do: []
  defp failure(f), do: ["FAILED: opening tube #{f.tubes_open + 1}: #{f.error}"]

  defp pair(xs), do: Enum.map_join(xs, " / ", &fmt/1)

  # A markdown table, which also reads well on a terminal.
  defp grid(head, rows) do
    all = [head | rows]
    widths = Enum.zip_with(all, fn col -> col |> Enum.map(&String.length/1) |> Enum.max() end)
    line = fn cells -> "| " <> Enum.join(Enum.zip_with(cells, widths, &String.pad_trailing/2), " | ") <> " |" end
    sep = "|" <> Enum.map_join(widths, "|", &String.duplicate("-", &1 + 2)) <> "|"
    Enum.join([line.(head), sep | Enum.map(rows, line)], "\n")
  end

  # ---- JSON -------------------------------------------------------------------

  @doc "Encodes maps, lists, numbers, atoms and strings as JSON."
  def json(m) when is_map(m) do
    body = m |> Enum.sort_by(fn {k, _} -> to_string(k) end) |> Enum.map_join(",", fn {k, v} -> json(to_string(k)) <> ":" <> json(v) end)
    "{" <> body <> "}"
  end

  def json(l) when is_list(l), do: "[" <> Enum.map_join(l, ",", &json/1) <> "]"
  def json(n) when is_integer(n), do: Integer.to_string(n)
  def json(x) when is_float(x), do: :erlang.float_to_binary(x, [:short])
  def json(b) when is_boolean(b), do: to_string(b)
  def json(nil), do: "null"
  def json(a) when is_atom(a), do: json(Atom.to_string(a))

  def json(s) when is_binary(s) do
    escaped =
      for <<c::utf8 <- s>>, into: "" do
        case c do
          ?" -> "\\\""
          ?\\ -> "\\\\"
          c when c < 0x20 -> "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
          c -> <<c::utf8>>
        end
      end

    "\"" <> escaped <> "\""
  end

  # ---- chart ------------------------------------------------------------------

  @doc "Draws the chart into `png` with gnuplot. Returns :ok or {:error, why}."
  def chart(res, png, title) do
    case System.find_executable("gnuplot") do
      nil ->
        {:error, "gnuplot not installed (scripts/bench.sh installs gnuplot-nox)"}

      gp ->
        dir = Path.join(System.tmp_dir!(), "tube-bench-chart-#{System.unique_integer([:positive])}")
        File.mkdir_p!(dir)
        write_data(res, dir)
        script = Path.join(dir, "chart.gp")
        scale? = res.scale.levels != []
        transports? = res.throughput != []
        File.write!(script, gnuplot_script(dir, png, title, length(res.throughput) + 1, transports?, scale?))
        {out, status} = System.cmd(gp, [script], stderr_to_stdout: true)
        File.rm_rf(dir)
        if status == 0, do: :ok, else: {:error, out}
    end
  end

  # A transport's figure for one size, or nil when that size was not run.
  defp size_value(t, size, key) do
    case Enum.find(t.sizes, &(&1.size == size)) do
      nil -> nil
      row -> Map.fetch!(row, key)
    end
  end

  defp write_data(res, dir) do
    tput = res.throughput
    kinds = Enum.map(tput, & &1.transport)
    header = "size " <> Enum.map_join(kinds, " ", &"\"#{@names[&1]}\"")
    sizes = tput |> Enum.flat_map(fn t -> Enum.map(t.sizes, & &1.size) end) |> Enum.uniq() |> Enum.sort()

    for {file, key, scale} <- [{"pps.dat", :rx_pps, 1.0e6}, {"mbps.dat", :rx_mbps, 1.0}] do
      rows =
        for size <- sizes do
          vals = Enum.map(tput, fn t -> size_value(t, size, key) end)
          "\"#{size} B\" " <> Enum.map_join(vals, " ", &if(&1, do: float(&1 / scale), else: "NaN"))
        end

      File.write!(Path.join(dir, file), Enum.join([header | rows], "\n") <> "\n")
    end

    rtt = for t <- tput, do: "\"#{@names[t.transport]}\" #{float(t.rtt.p50_us)} #{float(t.rtt.p99_us)}"
    File.write!(Path.join(dir, "rtt.dat"), Enum.join(rtt, "\n") <> "\n")

    scale =
      for l <- res.scale.levels do
        shared = Enum.sum(l.memfd_mapped_per_tube) / 1024
        beam = if Enum.any?(l.beam_bytes_per_tube, &is_nil/1), do: "NaN", else: float(Enum.sum(l.beam_bytes_per_tube) / 1024)
        "#{l.tubes} #{float(l.handshake_p50_ms)} #{float(l.handshake_p99_ms)} #{float(shared)} #{beam} #{float(l.agg_rx_pps / 1.0e6)}"
      end

    File.write!(Path.join(dir, "scale.dat"), Enum.join(scale, "\n") <> "\n")
  end

  defp float(x), do: :erlang.float_to_binary(x * 1.0, decimals: 4)

  defp gnuplot_script(dir, png, title, last_col, transports?, scale?) do
    d = fn f -> Path.join(dir, f) end

    """
    set terminal pngcairo noenhanced size 1400,1000 font "DejaVu Sans,11"
    set output "#{png}"
    set multiplot layout 2,2 title "#{title}" font ",13"
    #{if transports?, do: transport_panels(d, last_col), else: ""}
    #{if scale?, do: scale_panel(d), else: ""}
    unset multiplot
    """
  end

  # Throughput by size and round trip by transport: three of the four panels.
  defp transport_panels(d, last_col) do
    """
    set style data histograms
    set style histogram clustered gap 1
    set style fill solid 0.85 border -1
    set boxwidth 0.9
    set grid ytics
    set key top right
    set title "One-way throughput, packets/s received (millions)"
    set ylabel "Mpps"
    set yrange [0:*]
    plot for [i=2:#{last_col}] "#{d.("pps.dat")}" using i:xtic(1) title columnheader(i)
    set key top left
    set title "One-way throughput, payload MB/s received"
    set ylabel "MB/s"
    plot for [i=2:#{last_col}] "#{d.("mbps.dat")}" using i:xtic(1) title columnheader(i)
    set title "64-byte ping-pong round trip (lower is better, log scale)"
    set ylabel "microseconds"
    set logscale y
    set yrange [1:*]
    set key top right
    plot "#{d.("rtt.dat")}" using 2:xtic(1) title "p50", "" using 3 title "p99"
    """
  end

  defp scale_panel(d) do
    """
    set style data linespoints
    set title "Tubes open at once: open handshake and memory per tube"
    unset logscale y
    set yrange [0:*]
    set logscale x
    set xlabel "tubes open"
    set xrange [0.7:1500]
    set ylabel "handshake (ms)"
    set y2label "memory per tube, both nodes (KiB)"
    set y2tics
    set ytics nomirror
    set y2range [0:*]
    set key top left
    plot "#{d.("scale.dat")}" using 1:2 lw 2 pt 7 title "handshake p50", \\
         "" using 1:3 lw 2 pt 5 title "handshake p99", \\
         "" using 1:4 axes x1y2 lw 2 dt 2 pt 9 title "shared memory mapped (KiB)", \\
         "" using 1:5 axes x1y2 lw 2 dt 3 pt 11 title "BEAM memory (KiB)"
    """
  end
end
