defmodule Tube.Bench.Measure do
  @moduledoc false
  # The measurements: one-way throughput over a set of links, ping-pong
  # round trips, and the OS view of a node (CPU time, shared memory).

  alias Tube.Bench.Endpoint, as: E

  # Time between telling the endpoints and the start of the warm-up.
  @lead_ms 50

  @doc """
  Every link's `a` sends `size`-byte packets as fast as it can while its `b`
  counts what arrives in a window of `window_ms` after `warmup_ms`.
  Returns the sums over all links. `mode` is how the receivers take
  packets (see `Tube.Bench.Endpoint`'s count).
  """
  def throughput(links, peer_node, size, warmup_ms, window_ms, mode \\ :credit) do
    now_b = :erpc.call(peer_node, :erlang, :monotonic_time, [:nanosecond])
    t0 = now_b + (@lead_ms + warmup_ms) * 1_000_000
    t1 = t0 + window_ms * 1_000_000
    hard = t1 + 10_000_000_000
    counts = Enum.map(links, fn l -> E.cast(l.b, {:count, size, t0, t1, hard, mode}) end)
    send_ms = @lead_ms + warmup_ms + window_ms + 100
    sends = Enum.map(links, fn l -> E.cast(l.a, {:send_for, size, send_ms}) end)
    sent = Enum.map(sends, &E.await(&1, 120_000))
    got = Enum.map(counts, &E.await(&1, 120_000))
    summarise(size, sent, got)
  end

  defp summarise(size, sent, got) do
    attempted = Enum.sum(Enum.map(sent, & &1.attempted))
    send_ns = Enum.max(Enum.map(sent, & &1.ns))
    packets = Enum.sum(Enum.map(got, & &1.packets))
    bytes = Enum.sum(Enum.map(got, & &1.bytes))
    # Windows of concurrent receivers are the same instants; take the mean.
    ns = Enum.sum(Enum.map(got, & &1.ns)) / length(got)
    windows = Enum.map(got, &(&1.ns / 1.0e9))
    total = Enum.sum(Enum.map(got, & &1.total))
    drops = max(attempted - total, 0)

    %{
      size: size,
      rx_pps: packets / (ns / 1.0e9),
      rx_mbps: bytes / (ns / 1.0e9) / 1.0e6,
      window_s: %{min: Enum.min(windows), max: Enum.max(windows)},
      tx_pps: attempted / (send_ns / 1.0e9),
      sent: attempted,
      received: total,
      drops: drops,
      drop_pct: if(attempted > 0, do: 100.0 * drops / attempted, else: 0.0)
    }
  end

  @doc "Round trips of `size`-byte packets: `a` pings, `b` echoes. Returns ns percentiles."
  def ping(link, size, warmup, n) do
    echo = E.cast(link.b, :echo)
    _ = E.call(link.a, {:ping, size, warmup})
    samples = E.call(link.a, {:ping, size, n}, 120_000)
    :ok = E.call(link.b, :stop_echo)
    :stopped = E.await(echo)
    sorted = Enum.sort(samples)
    %{n: n, p50_us: pct(sorted, 50) / 1000, p99_us: pct(sorted, 99) / 1000, min_us: hd(sorted) / 1000}
  end

  @doc "The `p`th percentile of a sorted list (nearest rank)."
  def pct([], _p), do: 0
  def pct(sorted, p), do: Enum.at(sorted, min(length(sorted) - 1, max(0, ceil(p / 100 * length(sorted)) - 1)))

  @doc "Median of a list of numbers."
  def median(xs), do: pct(Enum.sort(xs), 50)

  @doc """
  The element in the middle of `xs` ordered by `key` (the upper one of the
  two middles for an even count): the run that stands for a set of runs.
  """
  def middle_by(xs, key), do: xs |> Enum.sort_by(key) |> Enum.at(div(length(xs), 2))

  @doc """
  CPU time (ns) used so far by OS process `pid`: utime + stime of
  /proc/<pid>/stat, which keeps the time of threads that have exited.
  """
  def cpu_ns(pid) do
    with {:ok, stat} <- File.read("/proc/#{pid}/stat"),
         [_, rest] <- String.split(stat, ") ", parts: 2) do
      fields = String.split(rest)
      ticks = String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
      div(ticks * 1_000_000_000, 100)
    else
      _ -> 0
    end
  end

  @doc "CPU used by the OS processes `pids` over `ms` of idling: % of one core each."
  def idle_cpu(pids, ms) do
    before = Enum.map(pids, &cpu_ns/1)
    t0 = System.monotonic_time(:nanosecond)
    Process.sleep(ms)
    dt = System.monotonic_time(:nanosecond) - t0
    after_ = Enum.map(pids, &cpu_ns/1)
    Enum.zip_with(before, after_, fn b, a -> 100.0 * (a - b) / dt end)
  end

  @doc "Shared memory of OS process `pid`: bytes of tube memfds mapped, and RssShmem."
  def shared_mem(pid) do
    mapped =
      case File.read("/proc/#{pid}/maps") do
        {:ok, maps} ->
          maps
          |> String.split("\n")
          |> Enum.filter(&String.contains?(&1, "/memfd:tube"))
          |> Enum.map(&mapping_size/1)
          |> Enum.sum()

        _ ->
          0
      end

    %{memfd_mapped: mapped, rss_shmem: status_kb(pid, "RssShmem") * 1024}
  end

  defp mapping_size(line) do
    [range | _] = String.split(line, " ", parts: 2)
    [lo, hi] = String.split(range, "-")
    String.to_integer(hi, 16) - String.to_integer(lo, 16)
  end

  defp status_kb(pid, key) do
    with {:ok, s} <- File.read("/proc/#{pid}/status"),
         [_, kb] <- Regex.run(~r/^#{key}:\s+(\d+) kB/m, s) do
      String.to_integer(kb)
    else
      _ -> 0
    end
  end

  @doc "Total BEAM memory of `node` after a garbage collection of every process."
  def beam_mem(node) do
    :erpc.call(node, fn ->
      Enum.each(Process.list(), &:erlang.garbage_collect/1)
      :erlang.memory(:total)
    end)
  end
end
