defmodule TubeTest.BatchTest do
  # Batch mode between this node and a peer BEAM: `{deliver, batch}` hands
  # the owner many packets per message, in order and each packet whole, and
  # send_batch/2 puts many packets in the ring in one call. The peer sends
  # (its tube's owner is a TubeTest.Remote process; send_batch/2 is called
  # there through :peer.call, which any process of the node may do) and
  # this test process receives, so every check sees the messages as they
  # arrive. The oracle is exact: send_batch/2 says which packets went in
  # (the first `sent` of each call), and the receiver must get exactly
  # those, in that order, with their contents.
  use ExUnit.Case, async: false

  alias TubeTest.{PeerNode, Remote}

  # include/tube_proto.hrl: the controls and the port_call of batch mode.
  @ctl_deliver TubeTest.Proto.value!(:TUBE_CTL_DELIVER)
  @ctl_send_batch TubeTest.Proto.value!(:TUBE_CTL_SEND_BATCH)
  @call_send_batch TubeTest.Proto.value!(:TUBE_CALL_SEND_BATCH)

  setup do
    {peer, domid, os_pid} = PeerNode.start()
    on_exit(fn -> PeerNode.stop(peer) end)
    %{peer: peer, domid: domid, os_pid: os_pid}
  end

  # A tube from this process (the owner, with `opts`) to an owner in the
  # peer (mode :count: it only counts what it gets). Returns {tube, peer port}.
  defp link(peer, domid, tid, opts) do
    task = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [:count, 10_000]) end)
    {:ok, t} = :tube.open(domid, tid, opts)
    {:ok, name} = Task.await(task, 15_000)
    {t, PeerNode.call(peer, Remote, :port, [name])}
  end

  # Sends `packets` from the peer in one send_batch/2; returns the ones that went in.
  defp peer_send(peer, port, packets) do
    {:ok, sent} = PeerNode.call(peer, :tube, :send_batch, [port, packets])
    Enum.take(packets, sent)
  end

  # Packet `i` of `size` bytes: its number, then bytes that depend on both,
  # so a packet cut, merged or moved shows.
  defp packet(i, size) when size >= 4, do: <<i::32, :binary.copy(<<rem(i * 7 + size, 251)>>, size - 4)::binary>>
  defp packet(i, size), do: binary_part(<<i::32>>, 4 - size, size)

  # Sizes 1..4096, the edges included.
  defp sizes(n, seed) do
    :rand.seed(:exsss, {seed, 2, 3})
    edges = [1, 2, 3, 4, 5, 63, 64, 65, 1500, 4095, 4096]
    edges ++ for(_ <- 1..(n - length(edges))//1, do: Enum.random([:rand.uniform(64), :rand.uniform(4096)]))
  end

  # Receives until `n` packets have arrived (either message form), in order.
  defp collect(t, n, acc \\ [], batches \\ 0)
  defp collect(_t, n, acc, batches) when n <= 0, do: {Enum.reverse(acc), batches}

  defp collect(t, n, acc, batches) do
    receive do
      {^t, {:data_batch, pkts}} when is_list(pkts) and pkts != [] ->
        collect(t, n - length(pkts), Enum.reverse(pkts, acc), batches + 1)

      {^t, {:data, p}} ->
        collect(t, n - 1, [p | acc], batches)
    after
      20_000 -> flunk("#{n} packets still missing after #{length(acc)}")
    end
  end

  defp refute_more(t) do
    refute_receive {^t, {:data_batch, _}}, 200
    refute_received {^t, {:data, _}}
  end

  test "many batches of 1..4096-byte packets arrive whole and in order", %{peer: peer, domid: domid} do
    {t, port} = link(peer, domid, 1, %{deliver: :batch})
    all = sizes(3000, 1) |> Enum.with_index(fn s, i -> packet(i, s) end)
    # Calls of 1 to 200 packets; a call that finds the ring full is retried
    # from the first packet that did not go in, so everything is sent once.
    sent = send_all(peer, port, all, 1)
    assert sent == all
    {got, batches} = collect(t, length(all))
    assert got == all
    # Many packets per message: far fewer messages than packets.
    assert batches < div(length(all), 4)
    refute_more(t)
    {:ok, info} = :tube.info(t)
    assert info.received == length(all)
    assert info.received_bytes == all |> Enum.map(&byte_size/1) |> Enum.sum()
  end

  defp send_all(_peer, _port, [], _k), do: []

  defp send_all(peer, port, pkts, k) do
    {now, later} = Enum.split(pkts, rem(k * 37, 200) + 1)
    went = peer_send(peer, port, now)
    rest = Enum.drop(now, length(went)) ++ later
    went ++ send_all(peer, port, rest, k + 1)
  end

  test "a flood into a passive tube: send_batch/2 says which went in, the rest are counted drops",
       %{peer: peer, domid: domid} do
    {t, port} = link(peer, domid, 2, %{deliver: :batch, active: false})

    went =
      for b <- 0..39 do
        peer_send(peer, port, for(i <- 0..199, do: packet(b * 200 + i, 1000)))
      end

    sent = List.flatten(went)
    attempted = 40 * 200
    # 126 KiB of ring holds 125 packets of 1000 bytes: most of the flood drops.
    assert length(sent) > 0 and length(sent) < attempted
    # Drops are the tail of a call: every call that dropped sent a prefix.
    assert Enum.all?(went, &(length(&1) <= 200))
    {:ok, peer_info} = PeerNode.call(peer, :tube, :info, [port])
    assert peer_info.dropped == attempted - length(sent)
    assert peer_info.sent == length(sent)
    :ok = :tube.setopts(t, active: true)
    {got, _} = collect(t, length(sent))
    assert got == sent
    refute_more(t)
  end

  test "credits count packets: {active, N} delivers exactly N, once delivers one",
       %{peer: peer, domid: domid} do
    {t, port} = link(peer, domid, 3, [{:deliver, :batch}, {:active, false}])
    sent = peer_send(peer, port, for(i <- 0..99, do: packet(i, 100)))
    assert length(sent) == 100
    :ok = :tube.setopts(t, active: 30)
    {first, _} = collect(t, 30)
    assert_receive {:tube_passive, ^t}, 5_000
    assert first == Enum.take(sent, 30)
    refute_more(t)
    :ok = :tube.setopts(t, active: :once)
    assert_receive {^t, {:data_batch, [one]}}, 5_000
    assert_receive {:tube_passive, ^t}, 5_000
    assert one == Enum.at(sent, 30)
    :ok = :tube.setopts(t, active: true)
    {rest, _} = collect(t, 69)
    assert rest == Enum.drop(sent, 31)
    refute_more(t)
  end

  test "switching between batch and packet delivery mid-stream loses and reorders nothing",
       %{peer: peer, domid: domid} do
    {t, port} = link(peer, domid, 4, %{})

    sent =
      for r <- 0..199 do
        went = peer_send(peer, port, for(i <- 0..29, do: packet(r * 30 + i, 40 + rem(r * 31 + i, 400))))
        :ok = :tube.setopts(t, deliver: if(rem(r, 2) == 0, do: :batch, else: :packet))
        went
      end
      |> List.flatten()

    {got, batches} = collect(t, length(sent))
    assert got == sent
    assert batches > 0
    refute_more(t)
  end

  test "send_batch/2 refuses bad input with badarg naming the packet, and sends nothing",
       %{peer: peer, domid: domid} do
    {t, _port} = link(peer, domid, 5, %{})
    big = :binary.copy("x", 4097)
    bad = [
      {:nope, ~r/not a proper list/},
      {["a", "b" | "c"], ~r/not a proper list/},
      {["a", "", "c"], ~r/packet 2 is 0 bytes/},
      {["a", "b", big], ~r/packet 3 is 4097 bytes/},
      {["a", :atom], ~r/packet 2 is not iodata/},
      {[[1, 2, [3 | "xyz"]], [300]], ~r/packet 2 is not iodata/}
    ]

    for {packets, why} <- bad do
      assert_raise ArgumentError, why, fn -> :tube.send_batch(t, packets) end
    end

    assert_raise ArgumentError, ~r/not a tube/, fn -> :tube.send_batch(self(), ["a"]) end

    # The driver checks the framing itself, for a caller that skips send_batch/2: a frame
    # of 0 bytes, over 4096, or cut short is badarg and nothing of the call is sent.
    for framed <- [<<0, 0>>, <<0, 1, "a", 0, 0>>, <<16, 1>> <> big, <<0, 5, "ab">>, <<0>>, <<0, 1, "a", 7>>] do
      assert_raise ArgumentError, fn -> :erlang.port_control(t, @ctl_send_batch, framed) end
    end

    for mode <- [<<>>, <<2>>, <<255>>, <<1, 1>>] do
      assert_raise ArgumentError, fn -> :erlang.port_control(t, @ctl_deliver, mode) end
    end

    {:ok, info} = :tube.info(t)
    assert info.sent == 0 and info.rejected == 0
    # iodata packets, an empty batch.
    assert {:ok, 2} = :tube.send_batch(t, [[?a, "bc"], [["d"] | "e"]])
    assert {:ok, 0} = :tube.send_batch(t, [])
    assert_raise ArgumentError, ~r/deliver/, fn -> :tube.setopts(t, deliver: :sometimes) end
    :ok = :tube.close(t)
    assert {:error, :closed} = :tube.send_batch(t, ["a"])
  end

  test "binaries, sub-binaries and other iodata in one stream: every packet whole and in order",
       %{peer: peer, domid: domid} do
    {t, port} = link(peer, domid, 10, %{deliver: :batch})
    # A list of binaries goes through port_call; one with any other iodata is framed and
    # goes through port_control. Calls of both kinds alternate, and some binaries are
    # parts of a larger one (sub-binaries, which the external format copies like others).
    big = :binary.copy(<<7, 1, 9>>, 3000)

    sent =
      for c <- 0..59 do
        pkts = for i <- 0..24, do: packet(c * 25 + i, 1 + rem(c * 97 + i * 13, 600))

        pkts =
          case rem(c, 3) do
            0 -> pkts
            1 -> List.update_at(pkts, rem(c, 25), fn p -> [binary_part(p, 0, 1), binary_part(p, 1, byte_size(p) - 1)] end)
            2 -> [binary_part(big, c, 1 + c * 50) | pkts]
          end

        went = peer_send(peer, port, pkts)
        assert length(went) == length(pkts)
        Enum.map(went, &IO.iodata_to_binary/1)
      end
      |> List.flatten()

    {got, _} = collect(t, length(sent))
    assert got == sent
    refute_more(t)
  end

  test "send_batch/2 and port_command/2 from one sender keep their order",
       %{peer: peer, domid: domid} do
    # This process sends; the peer's owner keeps what it gets, one message per packet.
    task = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [:collect, 10_000]) end)
    {:ok, t} = :tube.open(domid, 11, %{})
    {:ok, name} = Task.await(task, 15_000)

    # 100 rounds of 824 bytes of ring records: all of it fits in one ring, so nothing drops.
    sent =
      for r <- 0..99 do
        one = <<r::32, "single">>
        true = :erlang.port_command(t, one)
        batch = for i <- 0..9, do: <<r::32, i::8, :binary.copy(<<i>>, 60)::binary>>
        assert {:ok, 10} = :tube.send_batch(t, batch)
        [one | batch]
      end
      |> List.flatten()

    got = PeerNode.call(peer, Remote, :wait_received, [name, length(sent), 20_000])
    assert got.count == length(sent)
    assert got.packets == sent
    {:ok, info} = :tube.info(t)
    assert info.sent == length(sent) and info.dropped == 0
  end

  test "the driver's port_call answers framed, sending nothing, for anything but a list of good binaries",
       %{peer: peer, domid: domid} do
    {t, _port} = link(peer, domid, 12, %{})
    big = :binary.copy("x", 4097)
    # What send_batch/2 then frames itself (and answers: badarg or a send).
    not_plain = [
      :nope,
      ["a" | "b"],
      ["a", ""],
      [big],
      ["a", <<1::3>>],
      ["a", ["b"]],
      [1, 2, 3],
      {"a", "b"},
      ["a", :atom]
    ]

    for term <- not_plain do
      assert :framed == :erlang.port_call(t, @call_send_batch, term), inspect(term)
    end

    assert_raise ArgumentError, fn -> :erlang.port_call(t, 99, ["a"]) end
    {:ok, info} = :tube.info(t)
    assert info.sent == 0 and info.dropped == 0 and info.rejected == 0
    assert 0 == :erlang.port_call(t, @call_send_batch, [])
    assert 2 == :erlang.port_call(t, @call_send_batch, ["a", :binary.copy("y", 4096)])
    {:ok, info} = :tube.info(t)
    assert info.sent == 2 and info.sent_bytes == 4097
  end

  test "batch mode and send_batch/2 are for lossy tubes only", %{peer: peer, domid: domid} do
    assert_raise ArgumentError, ~r/lossy/, fn -> :tube.open(domid, 6, %{delivery: :reliable, deliver: :batch}) end
    task = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [:count, 10_000, %{delivery: :reliable}]) end)
    {:ok, t} = :tube.open(domid, 6, %{delivery: :reliable})
    {:ok, _} = Task.await(task, 15_000)
    assert_raise ArgumentError, ~r/lossy/, fn -> :tube.setopts(t, deliver: :batch) end
    assert_raise ArgumentError, ~r/reliable/, fn -> :tube.send_batch(t, ["a"]) end
    :ok = :tube.setopts(t, deliver: :packet)
    :ok = :tube.close(t)
  end

  test "a peer killed after its batches: what it sent arrives, then peer_closed",
       %{peer: peer, domid: domid, os_pid: os_pid} do
    {t, port} = link(peer, domid, 7, %{deliver: :batch})
    # Within one ring of 126 KiB, so nothing drops.
    sent = for b <- 0..3, do: peer_send(peer, port, for(i <- 0..99, do: packet(b * 100 + i, 250)))
    sent = List.flatten(sent)
    assert length(sent) == 400
    PeerNode.kill9(os_pid)
    {got, _} = collect(t, length(sent))
    assert got == sent
    assert_receive {:tube_closed, ^t, :peer_closed}, 10_000
    refute_more(t)
  end

  test "a receiver killed while batches flow: the sender sees its tube close",
       %{peer: peer, domid: domid, os_pid: os_pid} do
    task = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [:count, 10_000, %{deliver: :batch}]) end)
    {:ok, t} = :tube.open(domid, 8, %{})
    {:ok, _} = Task.await(task, 15_000)
    pkts = for i <- 0..499, do: packet(i, 64)
    assert {:ok, 500} = :tube.send_batch(t, pkts)
    PeerNode.kill9(os_pid)
    assert_receive {:tube_closed, ^t, :peer_closed}, 10_000
    assert {:error, :closed} = :tube.send_batch(t, pkts)
  end

  test "controlling_process/2 moves queued batches to the new owner in order",
       %{peer: peer, domid: domid} do
    {t, port} = link(peer, domid, 9, %{deliver: :batch})
    sent = peer_send(peer, port, for(i <- 0..199, do: packet(i, 300)))
    # Wait until the tube has delivered all of them into this mailbox.
    :ok = wait_delivered(t, length(sent))
    me = self()
    new = spawn_link(fn ->
      receive do
        :go -> send(me, {:moved, collect(t, length(sent))})
      end
    end)

    :ok = :tube.controlling_process(t, new)
    send(new, :go)
    assert_receive {:moved, {got, batches}}, 20_000
    assert got == sent and batches > 0
  end

  defp wait_delivered(t, n) do
    TubeTest.Checks.wait_until(fn ->
      {:ok, i} = :tube.info(t)
      i.received >= n
    end)
  end
end
