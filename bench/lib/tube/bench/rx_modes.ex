defmodule Tube.Bench.RxModes do
  @moduledoc false
  # The receive-mode table: one tube, a receiver that counts as fast as it
  # can, and the ways it can take packets side by side in one run: the
  # tube's default (no re-arming), `{active, true}` (every packet, no
  # bound) and fixed credits `{active, N}`. Rounds interleave the modes
  # (round 1 runs every size and mode, then round 2 ...), so that a change
  # in the machine's load spreads over all of them instead of landing on
  # one; each cell is the median of its rounds, with the smallest and
  # largest.

  alias Tube.Bench.{Link, Measure, Suite}
  alias Tube.Bench.Endpoint, as: E

  @modes [:default, {:active, true}, {:active, 500}, {:active, 64}, {:active, 2000}]

  @doc "The modes compared, in table order."
  def modes, do: @modes

  @doc "Runs `rounds` rounds over `sizes`; returns one row per size and mode."
  def run(c, s, log) do
    {link, _} = Link.open(:tube, c, 3_000_000)

    runs =
      try do
        for round <- 1..s.rx_rounds, size <- s.sizes, mode <- @modes do
          r = costed(link, c, size, s, mode)
          log.("round #{round} #{size} B #{label(mode)}: #{Suite.fmt(r.rx_pps / 1.0e6)} Mpps, drops #{Suite.fmt(r.drop_pct)}%, " <>
                 "received #{r.received} of #{r.sent}, receiving node #{Suite.fmt(r.rx_cpu_ns_per_pkt)} CPU ns/packet, " <>
                 "held #{r.rx_held} times for #{Suite.fmt(r.rx_held_ms)} ms")
          {size, mode, r}
        end
      after
        Link.close(link)
      end

    rows =
      for size <- s.sizes, mode <- @modes do
        rs = for {^size, ^mode, r} <- runs, do: r
        pps = Enum.map(rs, & &1.rx_pps)

        %{
          size: size,
          mode: label(mode),
          rx_pps_median: Measure.median(pps),
          rx_pps_min: Enum.min(pps),
          rx_pps_max: Enum.max(pps),
          rx_pps_runs: pps,
          drop_pct_median: Measure.median(Enum.map(rs, & &1.drop_pct)),
          rx_cpu_ns_median: Measure.median(Enum.map(rs, &(&1.rx_cpu_ns_per_pkt || 0.0)))
        }
      end

    %{rounds: s.rx_rounds, rows: rows}
  end

  defp costed(link, c, size, s, mode) do
    cpu0 = Measure.cpu_ns(c.peer_os_pid)
    i0 = held(link)
    r = Measure.throughput([link], c.node, size, s.warmup_ms, s.window_ms, mode)
    cpu = Measure.cpu_ns(c.peer_os_pid) - cpu0
    {n1, us1} = held(link)
    {n0, us0} = i0

    r
    |> Map.put(:rx_cpu_ns_per_pkt, if(r.received > 0, do: cpu / r.received, else: nil))
    |> Map.put(:rx_held, n1 - n0)
    |> Map.put(:rx_held_ms, (us1 - us0) / 1000)
  end

  # The receiving tube's holds so far (times, microseconds): how often and
  # how long the default mode kept the tube from its ring.
  defp held(link) do
    case E.call(link.b, :info) do
      {:ok, %{rx_held: n, rx_held_us: us}} -> {n, us}
      _ -> {0, 0}
    end
  end

  @doc "The table, with the default's share of the best credit mode per size."
  def table(%{rounds: rounds, rows: rows}) do
    head =
      "Receive modes, one tube, #{rounds} interleaved rounds: median Mpps received [min-max], drops, receiving node CPU ns/packet"

    lines =
      rows
      |> Enum.group_by(& &1.size)
      |> Enum.sort()
      |> Enum.flat_map(fn {size, rs} ->
        best = rs |> Enum.filter(&String.starts_with?(&1.mode, "{active, ")) |> Enum.reject(&(&1.mode == "{active, true}"))
        best = Enum.max_by(best, & &1.rx_pps_median)
        default = Enum.find(rs, &(&1.mode == "default"))

        Enum.map(rs, fn r ->
          "  #{String.pad_leading(Integer.to_string(size), 5)} B  #{String.pad_trailing(r.mode, 16)}" <>
            "#{String.pad_leading(mpps(r.rx_pps_median), 6)} [#{mpps(r.rx_pps_min)}-#{mpps(r.rx_pps_max)}]" <>
            "  drops #{Suite.fmt(r.drop_pct_median)}%  #{Suite.fmt(r.rx_cpu_ns_median)} ns"
        end) ++
          ["  #{String.pad_leading(Integer.to_string(size), 5)} B  default / best credit (#{best.mode}): " <>
             "#{Suite.fmt(100.0 * default.rx_pps_median / best.rx_pps_median)}%"]
      end)

    Enum.join([head | lines], "\n")
  end

  defp mpps(pps), do: Suite.fmt(pps / 1.0e6)

  defp label(:default), do: "default"
  defp label({:active, x}), do: "{active, #{x}}"
end
