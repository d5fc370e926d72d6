defmodule TubeReceiveTest do
  # The default receive mode of a lossy tube, `bounded`: every packet as it
  # arrives while the owner keeps up, and while it does not, the excess
  # drops in the ring (counted by the sender) instead of piling up in the
  # owner's mailbox. The receiver is on this node, the sender in a peer
  # node (another OS process).
  use ExUnit.Case, async: false

  alias TubeTest.{PeerNode, Remote}

  # From include/tube_proto.hrl (native/tube_ring/src/proto.rs): a bounded
  # tube's depth is at most 2048 packets (RX_MAX_QUEUE) and 2 MiB of its
  # recent average packet (RX_QUEUE_BYTES).
  @max_queue 2048
  @queue_bytes 2 * 1024 * 1024
  # The most packets a bounded tube of 4096-byte packets can have in its
  # owner's mailbox (the floods here are of 4096 bytes).
  @max_queued min(@max_queue, div(@queue_bytes, 4096))
  # What one queued 4096-byte packet may cost the node at most: the
  # binary, its reference in the message and the message's tuple, with room
  # for allocator overhead.
  @per_packet 4096 + 512
  # Everything else this node may allocate meanwhile (the flood's own
  # control traffic, the test's processes, allocator carriers).
  @slack 32 * 1024 * 1024

  setup do
    {peer, domid, _os_pid} = PeerNode.start()
    on_exit(fn -> PeerNode.stop(peer) end)
    %{peer: peer, peer_domid: domid}
  end

  # Accepts tube `tid` in the peer (its owner sends on request) and opens it
  # from a process of this node that runs `owner`; returns {tube, owner pid,
  # name of the peer's owner}.
  defp open_from(owner, peer, p, tid, opts \\ %{}) do
    task = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [:count, 10_000]) end)
    parent = self()

    pid =
      spawn_link(fn ->
        {:ok, t} = :tube.open(p, tid, Map.put(opts, :timeout, 10_000))
        send(parent, {:opened, self(), t})
        owner.(t)
      end)

    assert_receive {:opened, ^pid, t}, 15_000
    {:ok, name} = Task.await(task, 15_000)
    {t, pid, name}
  end

  # An owner that reads nothing until told to, then counts what it
  # receives and answers how many it has.
  defp sleeper(t) do
    receive do
      {:drain, from} -> drain(t, 0, from)
    end
  end

  defp drain(t, n, from) do
    receive do
      {^t, {:data, _}} -> drain(t, n + 1, from)
      {:count, from} -> send(from, {:count, n}) && drain(t, n, from)
    end
  end

  defp queue_len(pid), do: elem(Process.info(pid, :message_queue_len), 1)

  # Waits until `fun` returns a truthy value (checked every 10 ms).
  defp wait_for(fun, what, ms \\ 60_000) do
    deadline = System.monotonic_time(:millisecond) + ms
    wait_loop(fun, what, deadline)
  end

  defp wait_loop(fun, what, deadline) do
    case fun.() do
      v when v not in [nil, false] ->
        v

      _ ->
        if System.monotonic_time(:millisecond) > deadline, do: flunk("never happened: #{what}")

        receive do
        after
          10 -> wait_loop(fun, what, deadline)
        end
    end
  end

  defp node_memory do
    :erlang.garbage_collect()
    :erlang.memory(:total)
  end

  # The peer's owner sends `batches` x `n` packets of `size` bytes.
  defp flood(peer, name, batches, n, size) do
    for _ <- 1..batches, do: :ok = PeerNode.call(peer, Remote, :send_seq, [name, n, size], 60_000)
    :ok
  end

  test "a receiver that does not read: its mailbox and its node's memory stay bounded, the excess drops in the ring and is counted",
       %{peer: peer, peer_domid: p} do
    base = node_memory()
    {t, owner, name} = open_from(&sleeper/1, peer, p, 60)

    # Flights of 20,000 packets of 4096 bytes (each one over the bound on
    # its own) until the mailbox is over half the depth and the tube is
    # held (its window used up, no new one granted): how much of a flight
    # the receiving node takes depends on the CPU it gets.
    filling = flights_until_held(peer, name, t, owner, 0)
    assert queue_len(owner) <= @max_queued

    # More flood while held (5 flights, or for TUBE_RX_FLOOD_SECONDS in
    # scripts/soak.sh): nothing more reaches the mailbox, and the node's
    # memory stays under the bound after every flight.
    bound = @max_queued * @per_packet + @slack
    {flights, q_max, grown_max} = held_flights(peer, name, owner, base, bound)
    offered = (filling + flights) * 20_000

    # The excess dropped in the ring, counted on the sender's side: what
    # it put in the ring and what it dropped are all it was given.
    info = PeerNode.call(peer, Remote, :stats, [name]).info
    assert info.dropped > 0
    assert info.sent + info.dropped == offered
    assert info.sent < offered - @max_queued
    {:ok, mine} = :tube.info(t)
    assert mine.rx_held >= 1 and mine.received <= info.sent

    IO.puts(
      "\n  receive bound: #{offered} packets of 4096 B offered to a receiver that reads nothing, " <>
        "#{info.sent} entered the ring, #{info.dropped} dropped; mailbox at most #{q_max} packets, " <>
        "node memory grown by at most #{div(grown_max, 1024 * 1024)} MiB (bound #{div(bound, 1024 * 1024)} MiB)"
    )

    # Once the owner reads, delivery resumes: what the ring held, then new
    # packets, reach it.
    send(owner, {:drain, self()})
    flood(peer, name, 1, 100, 64)
    sent = PeerNode.call(peer, Remote, :stats, [name]).info.sent

    wait_for(
      fn ->
        send(owner, {:count, self()})
        assert_receive {:count, n}, 10_000
        n == sent
      end,
      "every packet the ring took reaches the owner once it reads"
    )

    :ok = :tube.close(t)
  end

  defp flights_until_held(peer, name, t, owner, n) do
    assert queue_len(owner) <= @max_queued

    cond do
      queue_len(owner) > div(@max_queued, 2) and held?(t) -> n
      n >= 500 -> flunk("not held after #{n} flights (#{queue_len(owner)} packets queued)")
      true -> flood(peer, name, 1, 20_000, 4096) && flights_until_held(peer, name, t, owner, n + 1)
    end
  end

  defp held?(t), do: match?({:ok, %{rx_held: h}} when h >= 1, :tube.info(t))

  # Returns {flights, largest mailbox seen, most node memory grown}.
  defp held_flights(peer, name, owner, base, bound) do
    flight = fn -> held_flight(peer, name, owner, base, bound) end

    case System.get_env("TUBE_RX_FLOOD_SECONDS") do
      nil ->
        Enum.reduce(1..5, {0, 0, 0}, fn _, acc -> add_flight(acc, flight.()) end)

      s ->
        until = System.monotonic_time(:millisecond) + String.to_integer(s) * 1000
        flights_until(until, {0, 0, 0}, flight)
    end
  end

  defp flights_until(until, acc, flight) do
    if System.monotonic_time(:millisecond) < until,
      do: flights_until(until, add_flight(acc, flight.()), flight),
      else: acc
  end

  defp add_flight({n, q_max, grown_max}, {q, grown}), do: {n + 1, max(q, q_max), max(grown, grown_max)}

  defp held_flight(peer, name, owner, base, bound) do
    flood(peer, name, 1, 20_000, 4096)
    q = queue_len(owner)
    assert q <= @max_queued
    grown = node_memory() - base
    assert grown < bound, "node memory grew by #{grown} bytes, over the bound of #{bound} (#{q} packets queued)"
    {q, grown}
  end

  test "a held tube whose peer closes delivers what its ring holds, then tube_closed",
       %{peer: peer, peer_domid: p} do
    parent = self()

    owner = fn t ->
      receive do
        :drain -> send(parent, {:got, drain_until_closed(t, 0)})
      end
    end

    {t, owner, name} = open_from(owner, peer, p, 63)
    flights_until_held(peer, name, t, owner, 0)
    sent = PeerNode.call(peer, Remote, :stats, [name]).info.sent
    :ok = PeerNode.call(peer, Remote, :close, [name])
    send(owner, :drain)
    assert_receive {:got, {n, :peer_closed}}, 60_000
    assert n == sent
  end

  defp drain_until_closed(t, n) do
    receive do
      {^t, {:data, _}} -> drain_until_closed(t, n + 1)
      {:tube_closed, ^t, reason} -> {n, reason}
    end
  end

  test "a receiver that keeps up gets every packet, in order, through many windows",
       %{peer: peer, peer_domid: p} do
    parent = self()
    {t, owner, name} = open_from(fn t -> relay(t, parent) end, peer, p, 61)
    assert {:ok, %{}} = :tube.info(t)

    # The sender never runs ahead of the receiver by more than one flight,
    # which the ring holds: nothing may drop, and the flights add up to
    # many windows of the governor.
    flights = 60
    per_flight = 1_000

    for f <- 0..(flights - 1) do
      first = f * per_flight
      :ok = PeerNode.call(peer, Remote, :send_seq, [name, first, per_flight, 64])

      for i <- first..(first + per_flight - 1) do
        assert_receive {:pkt, <<^i::32, _::binary>>}, 10_000
      end
    end

    info = PeerNode.call(peer, Remote, :stats, [name]).info
    assert info.dropped == 0
    assert info.sent == flights * per_flight
    assert {:ok, %{received: received}} = :tube.info(t)
    assert received == flights * per_flight
    assert flights * per_flight > 10 * @max_queue
    refute_received {:pkt, _}
    send(owner, :stop)
    :ok = :tube.close(t)
  end

  # The owner forwards each packet to the test process as it reads it.
  defp relay(t, to) do
    receive do
      {^t, {:data, d}} -> send(to, {:pkt, d}) && relay(t, to)
      :stop -> :ok
    end
  end

  test "the depth follows the packet size: a receiver that does not read holds 2048 packets of 64 bytes, 512 of 4096",
       %{peer: peer, peer_domid: p} do
    {t, owner, name} = open_from(&sleeper/1, peer, p, 64)

    # 64-byte packets: the depth is the packet cap, RX_MAX_QUEUE (2 MiB of
    # them would be 32,768). The first window is counted at the largest
    # packet (512); the depth grows once the tube has seen the sizes, and
    # the tube is held once the mailbox is over half of it.
    small = min(@max_queue, div(@queue_bytes, 64))
    q = fill_until(peer, name, t, owner, 64, div(small, 2), small)
    assert q > @max_queued

    # The same receiver, now sent 4096-byte packets: nothing more is
    # granted while it reads nothing.
    for _ <- 1..3, do: flood(peer, name, 1, 20_000, 4096)
    assert queue_len(owner) == q
    :ok = :tube.close(t)
  end

  # Floods `size`-byte packets until the mailbox holds more than `low`
  # (never more than `high`) and the tube is held; returns its length.
  defp fill_until(peer, name, t, owner, size, low, high, n \\ 0) do
    q = queue_len(owner)
    assert q <= high

    cond do
      q > low and held?(t) -> q
      n >= 500 -> flunk("#{q} packets queued after #{n} flights")
      true -> flood(peer, name, 1, 20_000, size) && fill_until(peer, name, t, owner, size, low, high, n + 1)
    end
  end

  test "{active, true} stays available, and a tube goes back to the default with {active, :bounded}",
       %{peer: peer, peer_domid: p} do
    parent = self()
    {t, owner, name} = open_from(fn t -> relay(t, parent) end, peer, p, 62, %{active: true})
    mode = fn -> :erlang.port_control(t, 3, <<255>>) |> :erlang.list_to_binary() end
    assert mode.() == <<0, 0::64-native>>
    :ok = PeerNode.call(peer, Remote, :send_seq, [name, 0, 10, 64])
    for i <- 0..9, do: assert_receive({:pkt, <<^i::32, _::binary>>}, 10_000)

    :ok = :tube.setopts(t, active: :bounded)
    assert mode.() == <<3, 0::64-native>>
    :ok = PeerNode.call(peer, Remote, :send_seq, [name, 10, 10, 64])
    for i <- 10..19, do: assert_receive({:pkt, <<^i::32, _::binary>>}, 10_000)

    assert_raise ArgumentError, fn -> :tube.setopts(t, active: :unbounded) end
    send(owner, :stop)
    :ok = :tube.close(t)
  end
end
