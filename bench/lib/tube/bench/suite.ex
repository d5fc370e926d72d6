defmodule Tube.Bench.Suite do
  @moduledoc false
  # The whole bench run: transports side by side, then tubes at scale.

  alias Tube.Bench.{Link, Machine, Measure}

  @sizes [64, 1500, 4096]

  @doc "Settings of a full run and of a --quick one."
  def settings(quick?) do
    common = %{transports: Link.transports(), scale: true, sizes: @sizes, handshakes: 20}

    Map.merge(common, if(quick?,
      do: %{rounds: 1, warmup_ms: 200, window_ms: 500, pings: 3_000, levels: [1, 10, 100, 1000], idle_ms: 1_000, scale_window_ms: 500},
      else: %{rounds: 5, warmup_ms: 300, window_ms: 1_000, pings: 20_000, levels: [1, 10, 100, 1000], idle_ms: 3_000, scale_window_ms: 1_000}))
  end

  @doc "Runs everything against `cluster`; `log` gets progress lines."
  def run(cluster, s, log) do
    log.("bench node OS pid #{cluster.os_pid}, peer #{cluster.peer_os_pid}")

    t = if s.transports == [], do: %{transports: [], machine: []}, else: transports(cluster, s, log)
    scale = if(s.scale, do: scale(cluster, s, log), else: %{baseline: %{}, levels: [], failed: nil, machine: []})

    refs = t.machine ++ scale.machine
    %{throughput: t.transports, scale: scale, machine: %{rounds: refs, summary: Machine.summary(refs)}}
  end

  # ---- transports side by side ------------------------------------------------

  # Every transport's link stays open for the whole part, and the rounds
  # interleave them: round 1 runs every transport at every size, then round
  # 2, and so on. The host this runs on changes speed within seconds (see
  # Tube.Bench.Machine), so runs of one transport back to back would all
  # land in one state of the host; interleaved, each figure's rounds are
  # spread over the whole part. Each round starts with the machine's
  # references.
  defp transports(c, s, log) do
    links = s.transports |> Enum.with_index() |> Enum.map(fn {kind, i} -> {kind, elem(Link.open(kind, c, 1_000_000 + i), 0)} end)

    try do
      {runs, refs} = rounds(links, c, s, log)

      Enum.map(links, fn {kind, link} ->
        sizes = Enum.map(s.sizes, fn size -> median_run(kind, size, for({^kind, ^size, r} <- runs, do: r), log) end)
        p = Measure.ping(link, 64, div(s.pings, 10), s.pings)
        log.("#{kind} ping-pong 64 B: p50 #{fmt(p.p50_us)} us, p99 #{fmt(p.p99_us)} us")
        %{transport: kind, sizes: sizes, rtt: p}
      end)
      |> then(&%{transports: &1, machine: refs})
    after
      Enum.each(links, fn {_, link} -> Link.close(link) end)
    end
  end

  defp rounds(links, c, s, log) do
    in_rounds(s, "round", log, fn round ->
      for {kind, link} <- links, size <- s.sizes do
        {kind, size, link |> costed_run(c, size, s) |> Map.put(:round, round)}
      end
    end)
  end

  # `s.rounds` rounds of `measure.(round)` (a list of results each), each
  # round after the machine's references: {all results, the references}.
  defp in_rounds(s, label, log, measure) do
    Enum.reduce(1..s.rounds, {[], []}, fn round, {results, refs} ->
      ref = Machine.reference()
      log.("#{label} #{round}/#{s.rounds}: machine #{machine_line(ref)}")
      {results ++ measure.(round), refs ++ [ref]}
    end)
  end

  @doc "One line for the machine's references (or why there are none)."
  def machine_line(nil), do: "no references (ring-bench not built)"

  def machine_line(m) do
    "CPU0/1 #{fmt(m.cpu0_mops)}/#{fmt(m.cpu1_mops)} Mops, copies #{fmt(m.copy0_mops)}/#{fmt(m.copy1_mops)} M/s, line #{fmt(m.line_rtt_ns)} ns"
  end

  # The run with the median rate stands for the size; every round's rate is kept.
  defp median_run(kind, size, runs, log) do
    best = Measure.middle_by(runs, & &1.rx_pps)
    log.("#{kind} #{size} B: #{fmt(best.rx_pps / 1.0e6)} Mpps rx, #{fmt(best.rx_mbps)} MB/s, drops #{fmt(best.drop_pct)}%" <>
           ", receiving node #{fmt(best.rx_cpu_ns_per_pkt)} CPU ns/packet" <>
           ", sending node #{fmt(best.tx_cpu_ns_per_pkt)} per packet sent" <>
           ", receiver's wake-ups per 1000 packets #{fmt(best.rx_wakeups_per_kpkt)}" <>
           " (rounds: #{Enum.map_join(runs, " ", &fmt(&1.rx_pps / 1.0e6))})")
    Map.put(best, :runs, Enum.map(runs, & &1.rx_pps))
  end

  @doc """
  One throughput run of `link` (`s.warmup_ms`, then `s.window_ms`), with
  the CPU time the receiving node (the peer) spent per packet it received:
  a figure that CPU contention from other work on the machine moves far
  less than the packet rate. The sending node (this one) is costed per
  packet it tried to send.
  """
  def costed_run(link, c, size, s) do
    w0 = wakeups(link)
    cpu0 = Measure.cpu_ns(c.peer_os_pid)
    tx0 = Measure.cpu_ns(c.os_pid)
    r = Measure.throughput([link], c.node, size, s.warmup_ms, s.window_ms)
    cpu = Measure.cpu_ns(c.peer_os_pid) - cpu0
    tx = Measure.cpu_ns(c.os_pid) - tx0
    w = wakeups(link)

    r
    |> Map.put(:rx_cpu_ns_per_pkt, if(r.received > 0, do: cpu / r.received, else: nil))
    |> Map.put(:tx_cpu_ns_per_pkt, if(r.sent > 0, do: tx / r.sent, else: nil))
    |> Map.put(:rx_wakeups_per_kpkt, if(w && w0 && r.received > 0, do: 1000 * (w - w0) / r.received, else: nil))
  end

  # Event-fd wake-ups of a tube's receiving end so far (nil for other transports).
  defp wakeups(link) do
    case Tube.Bench.Endpoint.call(link.b, :info) do
      {:ok, %{wakeups: w}} -> w
      _ -> nil
    end
  end

  # ---- scale ------------------------------------------------------------------

  # The tubes are opened level by level, each level's handshakes, memory and
  # idle CPU taken as it is reached; the throughput of every level is then
  # measured in interleaved rounds over the first n of the open tubes (the
  # others idle), for the same reason as the transports' rounds.
  defp scale(c, s, log) do
    pids = [c.os_pid, c.peer_os_pid]
    # Open/close cycles give the one-tube handshake figures.
    single = for i <- 1..s.handshakes, do: open_close(c, 2_000_000 + i)
    base = snapshot(c, pids, s)
    log.("0 tubes: idle CPU #{Enum.map_join(base.idle_cpu, " / ", &fmt/1)} % of a core (bench / peer)")
    acc = %{links: [], levels: [], failed: nil, first: nil}

    acc =
      Enum.reduce(s.levels, acc, fn
        _n, %{failed: f} = acc when f != nil -> acc
        n, acc -> level(c, pids, s, base, n, acc, single, log)
      end)

    try do
      levels = Enum.reverse(acc.levels)
      {tputs, refs} = level_rounds(c, s, acc.links, levels, log)
      levels = Enum.map(levels, fn l -> with_throughput(l, for({n, t} <- tputs, n == l.tubes, do: t), s, log) end)
      %{baseline: Map.drop(base, [:mem]), levels: levels, failed: acc.failed, machine: refs}
    after
      Enum.each(acc.links, &Link.close/1)
    end
  end

  defp level(c, pids, s, base, n, acc, single, log) do
    have = length(acc.links)
    {new, times, failed} = open_many(c, have, n)
    links = acc.links ++ new

    if failed do
      log.("opening tube #{length(links) + 1} failed: #{inspect(failed, limit: 8)}")
      %{acc | links: links, failed: %{tubes_open: length(links), error: inspect(failed, limit: 8)}}
    else
      times = if have == 0, do: single ++ times, else: times
      r = level_state(c, pids, s, base, links, times, acc, log)
      %{acc | links: links, levels: [r | acc.levels], first: acc[:first] || {n, r.beam_total}}
    end
  end

  defp open_many(c, have, n) do
    Enum.reduce_while(have..(n - 1)//1, {[], [], nil}, fn i, {links, times, nil} ->
      case Link.open(:tube, c, i) do
        {:error, why} -> {:halt, {Enum.reverse(links), Enum.reverse(times), why}}
        {link, ns} -> {:cont, {[link | links], [ns | times], nil}}
      end
    end)
    |> then(fn
      {links, times, nil} -> {Enum.reverse(links), Enum.reverse(times), nil}
      done -> done
    end)
  end

  # What a level costs at rest: its handshakes, memory and idle CPU.
  defp level_state(c, pids, s, base, links, times, acc, log) do
    n = length(links)
    Process.sleep(300)
    snap = snapshot(c, pids, s)
    sorted = Enum.sort(times)

    r = %{
      tubes: n,
      handshake_p50_ms: Measure.pct(sorted, 50) / 1.0e6,
      handshake_p99_ms: Measure.pct(sorted, 99) / 1.0e6,
      handshakes: length(sorted),
      idle_cpu_pct: snap.idle_cpu,
      # BEAM memory moves by hundreds of KiB on its own (allocator carriers,
      # logger, code loading), so the figure is the slope from the first
      # level on: (memory at n - memory at the first level) / added tubes.
      beam_bytes_per_tube: beam_slope(acc.first, snap.mem.beam, n),
      beam_total: snap.mem.beam,
      memfd_mapped_per_tube: per_tube(snap.mem.mapped, base.mem.mapped, n),
      shmem_resident_per_tube: per_tube(snap.mem.shmem, base.mem.shmem, n)
    }

    log.("#{n} tubes: handshake p50 #{fmt(r.handshake_p50_ms)} ms p99 #{fmt(r.handshake_p99_ms)} ms, idle CPU " <>
           "#{Enum.map_join(snap.idle_cpu, " / ", &fmt/1)} %, BEAM #{Enum.map_join(r.beam_bytes_per_tube, " / ", &fmt/1)} B/tube, " <>
           "shared mapped #{Enum.map_join(r.memfd_mapped_per_tube, " / ", &fmt/1)} B/tube")

    r
  end

  defp level_rounds(c, s, links, levels, log) do
    in_rounds(s, "scale round", log, fn _round ->
      for %{tubes: n} <- levels do
        Process.sleep(100)
        {n, Measure.throughput(Enum.take(links, n), c.node, 64, s.warmup_ms, s.scale_window_ms)}
      end
    end)
  end

  # The level's round with the median aggregate rate stands for it.
  defp with_throughput(level, tputs, s, log) do
    tput = Measure.middle_by(tputs, & &1.rx_pps)

    log.("#{level.tubes} tubes: aggregate #{fmt(tput.rx_pps / 1.0e6)} Mpps (drops #{fmt(tput.drop_pct)}%, received " <>
           "#{fmt(tput.received / 1.0e6)} M in all, receivers' windows #{fmt(tput.window_s.min)}-#{fmt(tput.window_s.max)} s; " <>
           "rounds: #{Enum.map_join(tputs, " ", &fmt(&1.rx_pps / 1.0e6))})")

    Map.merge(level, %{
      agg_rx_pps: tput.rx_pps,
      agg_rx_pps_runs: Enum.map(tputs, & &1.rx_pps),
      agg_rx_mbps: tput.rx_mbps,
      agg_drop_pct: tput.drop_pct,
      # Packets sent and received over the whole run (warm-up and the drain
      # after the window included): a large rest after the window means
      # the receivers' mailboxes had grown.
      agg_sent: tput.sent,
      agg_received: tput.received,
      window_ms: s.scale_window_ms,
      # The shortest and longest of the receivers' windows.
      rx_window_s: tput.window_s
    })
  end

  defp open_close(c, tid) do
    {%Link{} = link, ns} = Link.open(:tube, c, tid)
    Link.close(link)
    ns
  end

  # Both nodes' memory, then their CPU while nothing is sent.
  defp snapshot(c, pids, s) do
    beam = [Measure.beam_mem(node()), Measure.beam_mem(c.node)]
    shared = Enum.map(pids, &Measure.shared_mem/1)
    Process.sleep(200)
    cpu = Measure.idle_cpu(pids, s.idle_ms)

    %{
      idle_cpu: cpu,
      mem: %{beam: beam, mapped: Enum.map(shared, & &1.memfd_mapped), shmem: Enum.map(shared, & &1.rss_shmem)}
    }
  end

  defp beam_slope(nil, beam, _n), do: Enum.map(beam, fn _ -> nil end)
  defp beam_slope({n0, beam0}, beam, n), do: per_tube(beam, beam0, n - n0)

  defp per_tube(now, base, n), do: Enum.zip_with(now, base, fn a, b -> (a - b) / n end)

  @doc "A number for humans: 3 significant digits at most."
  def fmt(nil), do: "-"
  def fmt(x) when is_integer(x), do: Integer.to_string(x)

  def fmt(x) when is_float(x) do
    cond do
      abs(x) >= 100 -> :erlang.float_to_binary(Float.round(x), decimals: 0)
      abs(x) >= 10 -> :erlang.float_to_binary(x, decimals: 1)
      true -> :erlang.float_to_binary(x, decimals: 2)
    end
  end
end
