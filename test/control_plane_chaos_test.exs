defmodule TubeControlPlaneChaosTest do
  # The soak's chaos round (scripts/soak.sh sets TUBE_CHAOS_SECONDS; the
  # suite skips it): for that long, at random, the daemon is stopped and
  # continued or killed with -9, peers are paused and killed, and owners of
  # up to 1000 tubes crash, while tubes keep being opened. At the end every
  # tube is accounted for: open and carrying packets, or closed with a
  # reason its owner was told, and nothing is left in Xenstore.
  use ExUnit.Case, async: false

  alias TubeTest.{CtrlOwner, CtrlWorld, PeerNode, Remote}
  import TubeTest.Checks, only: [wait_until: 2]

  @seconds (case System.get_env("TUBE_CHAOS_SECONDS") do
              nil -> nil
              s -> String.to_integer(s)
            end)

  @moduletag timeout: :infinity
  if @seconds == nil, do: @moduletag(skip: "soak only: TUBE_CHAOS_SECONDS=N (scripts/soak.sh)")

  test "chaos: daemon stopped and killed, peers paused and killed, owners of 1000 tubes crashing" do
    w = CtrlWorld.new()
    on_exit(fn -> CtrlWorld.cleanup(w, []) end)
    {a, da, _} = CtrlWorld.peer(w)
    servers = for _ <- 1..2, do: server(w)
    deadline = System.monotonic_time(:millisecond) + (@seconds || 0) * 1000
    :rand.seed(:exsss, {1, 2, 3})
    {servers, owners, counts} = loop(w, a, servers, [], %{}, deadline)

    # Calm again: every tube of every owner still alive works or was closed with a reason.
    for {_, _, os} <- servers, do: CtrlWorld.signal(os, "CONT")
    CtrlWorld.signal_daemon(w, "CONT")

    results =
      for {pid, _dom} <- owners do
        PeerNode.call(a, CtrlOwner, :check, [pid], 600_000)
      end

    broken = Enum.sum(for {_, _, b} <- results, do: b)
    working = Enum.sum(for {x, _, _} <- results, do: x)
    closed = Enum.sum(for {_, c, _} <- results, do: c)
    IO.puts("\n  chaos: #{inspect(counts)}; at the end #{working} tubes working, #{closed} closed with a reason")
    assert broken == 0

    # Then every owner goes: nothing may be left, on any node or in Xenstore.
    for {pid, _} <- owners, do: PeerNode.call(a, CtrlOwner, :kill, [pid])
    nodes = [{a, da} | for({p, d, _} <- servers, do: {p, d})]
    wait_until(fn -> Enum.all?(nodes, fn {p, _} -> PeerNode.call(p, :tube, :tubes, []) == [] end) end, 6_000)

    wait_until(
      fn ->
        Enum.all?(nodes, fn {_, d} ->
          CtrlWorld.children(w, "/local/domain/#{d}/data/nock") == [] and
            CtrlWorld.children(w, "/local/domain/#{d}/data/tip") == []
        end)
      end,
      6_000
    )
  end

  defp server(w) do
    {p, d, os} = CtrlWorld.peer(w)
    :ok = PeerNode.call(p, Remote, :serve, [:echo])
    {p, d, os}
  end

  defp loop(w, a, servers, owners, counts, deadline) do
    if System.monotonic_time(:millisecond) > deadline do
      {servers, owners, counts}
    else
      {action, servers, owners} = step(:rand.uniform(7), w, a, servers, owners)
      loop(w, a, servers, owners, Map.update(counts, action, 1, &(&1 + 1)), deadline)
    end
  end

  # Opens a batch of tubes to one server, Tids chosen at random.
  defp step(1, _w, a, servers, owners) do
    {_, d, _} = Enum.random(servers)
    n = Enum.random([50, 100, 200])
    tids = Enum.take_random(0..100_000, n)
    {:ok, pid, _} = PeerNode.call(a, CtrlOwner, :open_many, [d, tids, 3_000], 600_000)
    {:open, servers, [{pid, d} | owners]}
  end

  # An owner of 1000 tubes, which then crashes.
  defp step(2, _w, a, servers, owners) do
    {_, d, _} = Enum.random(servers)
    {:ok, pid, _} = PeerNode.call(a, CtrlOwner, :open_many, [d, Enum.take_random(0..100_000, 1000), 3_000], 600_000)
    PeerNode.call(a, CtrlOwner, :kill, [pid])
    {:owner_1000_crash, servers, owners}
  end

  defp step(3, _w, a, servers, [{pid, _} | owners]) do
    PeerNode.call(a, CtrlOwner, :kill, [pid])
    {:owner_crash, servers, owners}
  end

  defp step(4, w, _a, servers, owners) do
    CtrlWorld.signal_daemon(w, "STOP")
    Process.sleep(Enum.random(200..3_000))
    CtrlWorld.signal_daemon(w, "CONT")
    {:daemon_stop, servers, owners}
  end

  defp step(5, w, a, servers, owners) do
    CtrlWorld.signal_daemon(w, "KILL")
    # A node restarts it (embedded daemon); wait until the opener is back.
    wait_until(fn -> PeerNode.call(a, :tube_registry, :conn, []) |> elem(0) == :ok end, 3_000)
    {:daemon_kill, servers, owners}
  end

  defp step(6, _w, _a, servers, owners) do
    {_, _, os} = Enum.random(servers)
    CtrlWorld.signal(os, "STOP")
    Process.sleep(Enum.random(200..3_000))
    CtrlWorld.signal(os, "CONT")
    {:peer_pause, servers, owners}
  end

  defp step(7, w, _a, [{_, _, os} | rest], owners) do
    PeerNode.kill9(os)
    {:peer_kill, rest ++ [server(w)], owners}
  end

  defp step(_, w, a, servers, owners), do: step(1, w, a, servers, owners)
end
