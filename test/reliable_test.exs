defmodule ReliableTest do
  # Reliable tubes (delivery: :reliable) between this node and a peer BEAM:
  # nothing dropped, order kept, messages of any size, backpressure through
  # a busy port, and the peer's death seen through a busy port.
  use ExUnit.Case, async: false
  import Bitwise

  alias DistTest.Sink
  alias TubeTest.PeerNode

  setup do
    {peer, domid, os_pid} = PeerNode.start()
    on_exit(fn -> PeerNode.stop(peer) end)
    %{peer: peer, domid: domid, os_pid: os_pid}
  end

  defp start_sink(peer, active) do
    :ok = PeerNode.call(peer, Sink, :start, [active])
  end

  defp open(domid, tid) do
    {:ok, t} = :tube.open(domid, tid, %{delivery: :reliable})
    t
  end

  # Waits (on the sink's own answers) until it has `n` messages.
  defp wait_count(peer, n) do
    TubeTest.Checks.wait_until(fn -> PeerNode.call(peer, Sink, :result, []).n >= n end, 100_000)
    PeerNode.call(peer, Sink, :result, [])
  end

  defp seq(i, pad), do: <<"SEQ", i::32, :binary.copy(<<i::8>>, pad)::binary>>

  test "a flood of small messages: none dropped, in order, sent = received", %{peer: peer, domid: domid} do
    start_sink(peer, true)
    t = open(domid, 11)
    n = 200_000
    bytes = for i <- 0..(n - 1), reduce: 0 do
      acc ->
        m = seq(i, rem(i * 37, 180))
        true = :erlang.port_command(t, m)
        acc + byte_size(m)
    end

    r = wait_count(peer, n)
    assert %{n: ^n, bytes: ^bytes, in_order: true, next_seq: ^n} = r
    {:ok, mine} = :tube.info(t)
    {:ok, theirs} = PeerNode.call(peer, Sink, :info, [])
    assert mine.sent == n and theirs.received == n
    assert mine.sent_bytes == bytes and theirs.received_bytes == bytes
    assert mine.dropped == 0 and mine.rejected == 0 and mine.queued_bytes == 0
  end

  test "messages of 0 B to 64 MiB arrive whole, checked by content", %{peer: peer, domid: domid} do
    start_sink(peer, true)
    t = open(domid, 12)
    sizes = [0, 1, 64, 65, 4095, 4096, 4097, 65_536, 65_577, 1 <<< 20, 16 <<< 20, 64 <<< 20, 3]

    msgs =
      for {s, k} <- Enum.with_index(sizes) do
        :crypto.strong_rand_bytes(min(s, 1024)) |> :binary.copy(div(s, max(min(s, 1024), 1)) + 1)
        |> binary_part(0, s)
        |> tap(fn _ -> k end)
      end

    # An iolist of pieces must arrive as one message too.
    msgs = msgs ++ [IO.iodata_to_binary(["ab", <<0::size(8000)-unit(8)>>, "cd"])]
    for m <- msgs, do: true = :erlang.port_command(t, if(byte_size(m) > 10_000, do: [m], else: m))
    r = wait_count(peer, length(msgs))
    assert r.digests == Enum.map(msgs, &{byte_size(&1), :erlang.md5(&1)})
    {:ok, info} = :tube.info(t)
    assert info.sent == length(msgs) and info.dropped == 0
  end

  test "a full ring makes the port busy and suspends the sender until the peer drains",
       %{peer: peer, domid: domid} do
    start_sink(peer, false)
    t = open(domid, 13)
    me = self()
    n = 5_000
    sender = spawn(fn ->
      for i <- 0..(n - 1), do: :erlang.port_command(t, seq(i, 1000))
      send(me, :all_sent)
    end)
    # The sink reads nothing: the ring fills, the port goes busy and the
    # sender is suspended inside port_command.
    TubeTest.Checks.wait_until(fn -> Process.info(sender, :status) == {:status, :suspended} end, 100_000)
    {:ok, busy} = :tube.info(t)
    assert busy.busy >= 1 and busy.queued_bytes > 0 and busy.dropped == 0
    refute_received :all_sent
    :ok = PeerNode.call(peer, Sink, :setopts, [[active: true]])
    assert_receive :all_sent, 60_000
    r = wait_count(peer, n)
    assert %{n: ^n, in_order: true} = r
    {:ok, done} = :tube.info(t)
    assert done.sent == n and done.queued_bytes == 0 and done.busy_us > 0
  end

  test "kill -9 of the reader closes a writer that waits for room", %{peer: peer, domid: domid, os_pid: os_pid} do
    start_sink(peer, false)
    t = open(domid, 14)
    me = self()
    spawn(fn ->
      # The port closes under the suspended sender: its next command fails.
      try do
        Enum.each(1..10, fn _ -> :erlang.port_command(t, :binary.copy(<<7>>, 1 <<< 20)) end)
      rescue
        ArgumentError -> :closed
      end
      send(me, :sender_done)
    end)
    TubeTest.Checks.wait_until(fn -> match?({:ok, %{queued_bytes: q}} when q > 0, :tube.info(t)) end, 100_000)
    PeerNode.kill9(os_pid)
    # The ring's hang-up (peer_closed) and the release of the peer's domain
    # in Xenstore (peer_down) race to tell; either closes the busy tube.
    assert_receive {:tube_closed, ^t, reason} when reason in [:peer_closed, :peer_down], 10_000
  end

  test "kill -9 of the writer closes the reader", %{peer: peer} do
    # Here the peer writes and this node reads.
    me = self()
    reader = spawn(fn ->
      {:ok, t} = :tube.accept(%{delivery: :reliable, timeout: 60_000})
      send(me, {:reader, t})
      receive do
        {:tube_closed, ^t, reason} -> send(me, {:reader_closed, reason})
      end
    end)
    os_pid = PeerNode.call(peer, :os, :getpid, []) |> List.to_integer()
    my_domid = :tube.domid()
    :ok = PeerNode.call(peer, Sink, :spawn_writer, [my_domid, 15])
    assert_receive {:reader, _t}, 30_000
    PeerNode.kill9(os_pid)
    assert_receive {:reader_closed, reason} when reason in [:peer_closed, :peer_down], 10_000
    _ = reader
  end

  test "a lossy and a reliable tube keep their own rules", %{peer: peer, domid: domid} do
    start_sink(peer, true)
    t = open(domid, 16)
    assert_raise ArgumentError, fn -> :tube.open(domid, 17, %{delivery: :sometimes}) end
    # A lossy tube still refuses a packet over 4096 bytes (counted), a
    # reliable one takes it.
    true = :erlang.port_command(t, :binary.copy("z", 5000))
    r = wait_count(peer, 1)
    assert [{5000, _}] = r.digests
  end

  test "reliable framing no honest peer writes closes the tube as corrupt, after what came before" do
    bin = TubeTest.ChaosHostile.build!()
    :ok = Sink.start(true)
    on_exit(fn -> if Process.whereis(:dist_sink), do: Sink.stop() end)
    layout = Path.join(Path.dirname(System.fetch_env!("XENSTORED_PATH")), "nock-layout-reliable")
    TubeTest.ChaosHostile.record_layout!(:tube_daemon.socket_path(), layout)
    on_exit(fn -> File.rm(layout) end)
    args = ["bad-framing", "--tip", :tube.domid(), "--tid", 21, "--xs", :tube_daemon.socket_path(),
            "--layout", layout, "--timeout-ms", 10_000]
    hostile = TubeTest.ChaosHostile.start(bin, args)
    :ok = Sink.wait_ready()
    {status, lines, result} = TubeTest.ChaosHostile.await(hostile, 60_000)
    assert status == 0, "tube-hostile failed: #{inspect(lines)}"
    assert result["tip_closed"] == "true"
    TubeTest.Checks.wait_until(fn -> Sink.result().closed != nil end)
    r = Sink.result()
    assert r.closed == :corrupt
    assert r.digests == for(i <- 0..2, do: {8, :erlang.md5("honest-#{i}")})
  end
end
