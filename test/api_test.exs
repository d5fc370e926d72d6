defmodule TubeApiTest do
  # The conventions tube shares with gen_tcp and gen_udp: send/2 and
  # emsgsize, controlling_process/2, options as maps or lists checked
  # alike, badarg with error_info naming the argument.
  use ExUnit.Case, async: false

  alias TubeTest.{PeerNode, Remote}

  # include/tube_proto.hrl: the active-mode control and its query.
  @ctl_active TubeTest.Proto.value!(:TUBE_CTL_ACTIVE)
  @active_query TubeTest.Proto.value!(:TUBE_ACTIVE_QUERY)

  setup do
    {peer, domid, _os_pid} = PeerNode.start()
    on_exit(fn -> PeerNode.stop(peer) end)
    %{peer: peer, peer_domid: domid}
  end

  # Opens tube `tid` from this process to an owner in the peer running
  # `mode`; returns {tube, name of the peer's owner}.
  defp open_to_peer(peer, p, tid, mode, opts \\ %{}) do
    task = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [mode, 10_000]) end)
    {:ok, t} = :tube.open(p, tid, Map.put(opts, :timeout, 10_000))
    {:ok, name} = Task.await(task, 15_000)
    {t, name}
  end

  # The message an ArgumentError raised by `fun` carries, and the Erlang
  # shell's text for the same exception.
  defp badarg_texts(fun) do
    try do
      fun.()
      flunk("no badarg")
    catch
      :error, :badarg ->
        st = __STACKTRACE__
        ex = Exception.normalize(:error, :badarg, st)
        shell = :erl_error.format_exception(:error, :badarg, st) |> IO.chardata_to_string()
        {Exception.message(ex), shell}
    end
  end

  # The driver reports the delivery mode for an active control of <<255>>.
  defp mode_now(t), do: :erlang.port_control(t, @ctl_active, <<@active_query>>) |> :erlang.list_to_binary()

  describe "send/2" do
    test "empty and oversize packets answer {:error, :emsgsize}; port_command only counts them",
         %{peer: peer, peer_domid: p} do
      {t, name} = open_to_peer(peer, p, 20, :collect)

      assert {:error, :emsgsize} = :tube.send(t, "")
      assert {:error, :emsgsize} = :tube.send(t, [[], "", [[]]])
      assert {:error, :emsgsize} = :tube.send(t, :binary.copy("x", 4097))
      assert {:error, :emsgsize} = Tube.send(t, [:binary.copy("x", 4096), "y"])
      {:ok, info} = :tube.info(t)
      assert info.rejected == 0, "send/2 must not hand a bad packet to the port"
      assert info.sent == 0

      assert :ok = :tube.send(t, "a")
      assert :ok = :tube.send(t, ["b", [?c], "d"])
      assert :ok = Tube.send(t, :binary.copy("z", 4096))
      s = PeerNode.call(peer, Remote, :wait_received, [name, 3])
      assert s.packets == ["a", "bcd", :binary.copy("z", 4096)]

      # The raw port interface: true, nothing sent, counted as rejected.
      assert true == :erlang.port_command(t, "")
      assert true == :erlang.port_command(t, :binary.copy("x", 4097))
      {:ok, info} = :tube.info(t)
      assert info.rejected == 2
      assert info.sent == 3

      # Not iodata: badarg naming the packet.
      {msg, _} = badarg_texts(fn -> :tube.send(t, [1, 2, 300]) end)
      assert msg =~ "2nd argument: not iodata"
      {msg, _} = badarg_texts(fn -> :tube.send(:not_a_port, "x") end)
      assert msg =~ "1st argument: not a tube"

      :ok = :tube.close(t)
      assert {:error, :closed} = :tube.send(t, "late")
    end
  end

  describe "controlling_process/2" do
    test "packets queued in the old owner's mailbox reach the new owner first, in order, and a passive tube stays passive",
         %{peer: peer, peer_domid: p} do
      {t, name} = open_to_peer(peer, p, 21, :collect, %{active: 30})
      :ok = PeerNode.call(peer, Remote, :send_seq, [name, 100, 16])

      # The tube delivers 30 packets, then {:tube_passive, t}; the other 70
      # wait in the ring.
      assert_receive {:tube_passive, ^t}, 10_000
      # Put it back, behind the packets, where it was.
      send(self(), {:tube_passive, t})
      assert {:messages, queued} = Process.info(self(), :messages)
      assert length(for({^t, {:data, _}} <- queued, do: 1)) == 30

      parent = self()

      new_owner =
        spawn_link(fn ->
          receive do
            :go -> :ok
          end

          first = collect(t, 31, [])
          send(parent, {:mode_after, mode_now(t)})
          :ok = :tube.setopts(t, active: true)
          rest = collect(t, 70, [])
          send(parent, {:got, first ++ rest})
        end)

      assert :ok = :tube.controlling_process(t, new_owner)
      assert {:connected, ^new_owner} = Port.info(t, :connected)
      assert {:messages, []} = Process.info(self(), :messages)
      refute t in elem(Process.info(self(), :links), 1)
      assert t in elem(Process.info(new_owner, :links), 1)
      send(new_owner, :go)

      # Handed over passive (credit 0), it stays passive until the new owner
      # asks for more.
      assert_receive {:mode_after, <<1, 0::64-native>>}, 10_000
      assert_receive {:got, got}, 10_000

      seqs = for {:data, <<i::32, _::binary>>} <- got, do: i
      assert seqs == Enum.to_list(0..99)
      assert Enum.at(got, 30) == :passive
    end

    test "a stream in flight: nothing the tube delivers after the hand-over overtakes what was queued",
         %{peer: peer, peer_domid: p} do
      {t, name} = open_to_peer(peer, p, 22, :count)
      parent = self()
      new_owner =
        spawn_link(fn ->
          got = collect_until_end(t, [])
          send(parent, {:got, got, mode_now(t)})
        end)

      # A burst of 5,000 packets, then 50 calls of 50 that keep the stream
      # flowing while the burst is being moved.
      packets = for i <- 0..7_499, do: <<i::32, 0::96>>
      {burst, rest} = Enum.split(packets, 5_000)

      sender =
        Task.async(fn ->
          for chunk <- [burst | Enum.chunk_every(rest, 50)] do
            PeerNode.call(peer, Remote, :send_packets, [name, chunk])
          end

          :ok
        end)

      # Hand over while the stream flows: at the first packet, which goes
      # to the new owner ahead of what controlling_process/2 moves.
      assert_receive {^t, {:data, <<0::32, _::binary>>}} = first, 10_000
      send(new_owner, first)
      assert :ok = Tube.controlling_process(t, new_owner)
      :ok = Task.await(sender, 60_000)
      sent = PeerNode.call(peer, Remote, :stats, [name]).info.sent

      # The end mark may meet a full ring (delivery is lossy): sent again
      # until the new owner has it.
      {got, mode} = end_mark(peer, name)
      seqs = for <<i::32, _::binary>> <- got, do: i
      assert seqs == Enum.sort(seqs), "packets out of order after the hand-over"
      assert length(Enum.uniq(seqs)) == length(seqs)
      # Every packet that entered the ring reached one owner or the other.
      assert length(seqs) == sent
      assert mode == <<3, 0::64-native>>, "back to the default, bounded"
    end

    test "only the owner hands a tube over; closed tubes and bad arguments",
         %{peer: peer, peer_domid: p} do
      {t, _name} = open_to_peer(peer, p, 23, :collect)
      me = self()
      assert :ok = :tube.controlling_process(t, me)

      other = spawn_link(fn -> receive(do: (:stop -> :ok)) end)
      task = Task.async(fn -> :tube.controlling_process(t, other) end)
      assert {:error, :not_owner} = Task.await(task)
      assert {:connected, ^me} = Port.info(t, :connected)

      {msg, shell} = badarg_texts(fn -> :tube.controlling_process(:nope, :nobody) end)
      assert msg =~ "1st argument: not a tube"
      assert msg =~ "2nd argument: not a pid"
      assert shell =~ "*** argument 2: not a pid"

      :ok = :tube.close(t)
      assert {:error, :closed} = :tube.controlling_process(t, other)
      send(other, :stop)
    end
  end

  defp end_mark(peer, name) do
    PeerNode.call(peer, Remote, :send_packets, [name, ["end"]])

    receive do
      {:got, got, mode} -> {got, mode}
    after
      1_000 -> end_mark(peer, name)
    end
  end

  # Packets of tube t until the packet "end", in the order they came.
  defp collect_until_end(t, acc) do
    receive do
      {^t, {:data, "end"}} -> Enum.reverse(acc)
      {^t, {:data, d}} -> collect_until_end(t, [d | acc])
    after
      30_000 -> exit({:no_end_mark, length(acc)})
    end
  end

  # Collects n messages of tube t: packets as {:data, bin}, passive as :passive.
  defp collect(_t, 0, acc), do: Enum.reverse(acc)

  defp collect(t, n, acc) do
    receive do
      {^t, {:data, d}} -> collect(t, n - 1, [{:data, d} | acc])
      {:tube_passive, ^t} -> collect(t, n - 1, [:passive | acc])
    after
      10_000 -> exit({:collect_timeout, n, Enum.reverse(acc)})
    end
  end

  describe "options" do
    test "maps and {Key, Value} lists alike for open/3, accept/1 and setopts/2",
         %{peer: peer, peer_domid: p} do
      task = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [:echo, 10_000]) end)
      {:ok, t} = :tube.open(p, 24, timeout: 10_000, active: :once, busy_poll: 0, delivery: :lossy)
      {:ok, _} = Task.await(task, 15_000)
      {:ok, info} = :tube.info(t)
      assert info.busy_poll == 0
      assert mode_now(t) == <<1, 1::64-native>>

      # A later pair overrides an earlier one, as in gen_tcp.
      :ok = :tube.setopts(t, [{:active, false}, {:busy_poll, 7}, {:busy_poll, 9}])
      assert {:ok, %{busy_poll: 9}} = :tube.info(t)
      :ok = :tube.setopts(t, %{active: 5})
      assert mode_now(t) == <<1, 5::64-native>>
      :ok = Tube.setopts(t, active: true)
      assert mode_now(t) == <<0, 0::64-native>>

      assert {:error, :timeout} = :tube.accept(timeout: 0, tids: {0, 10}, delivery: :lossy)
      assert {:error, :timeout} = :tube.accept(%{timeout: 0, tids: {7, 7}})
      :ok = :tube.close(t)
    end

    test "unknown keys and bad values raise badarg naming the argument, everywhere",
         %{peer: peer, peer_domid: p} do
      {t, _} = open_to_peer(peer, p, 25, :echo)

      for {fun, arg, text} <- [
            {fn -> :tube.open(p, 26, %{tmeout: 100}) end, "3rd", "unknown option tmeout"},
            {fn -> :tube.open(p, 26, tmeout: 100) end, "3rd", "unknown option tmeout"},
            {fn -> :tube.open(p, 26, [:binary]) end, "3rd", "binary is not a {Key, Value} option"},
            {fn -> :tube.open(p, 26, [{:timeout, 1} | :tail]) end, "3rd", "not a proper list"},
            {fn -> :tube.open(p, 26, :bad) end, "3rd", "not a map or a list"},
            {fn -> :tube.open(p, 26, %{delivery: :sometimes}) end, "3rd", "bad value sometimes for delivery"},
            {fn -> :tube.open(p, 26, %{tids: {0, 1}}) end, "3rd", "unknown option tids"},
            {fn -> :tube.open(p, -1) end, "2nd", "not a Tid"},
            {fn -> :tube.open(p, 4_294_967_296, %{}) end, "2nd", "not a Tid"},
            {fn -> :tube.open(-5) end, "1st", "not a domid"},
            {fn -> :tube.open(40_000, 0) end, "1st", "not a domid"},
            {fn -> :tube.open(0) end, "1st", "domain 0 is Xen's control domain, never a node"},
            {fn -> Tube.open(0, 1, %{}) end, "1st", "domain 0 is Xen's control domain"},
            {fn -> :tube.accept(%{timout: 1}) end, "1st", "unknown option timout"},
            {fn -> :tube.accept(tids: {5, 1}) end, "1st", "bad value {5,1} for tids"},
            {fn -> :tube.accept(tids: {0, 4_294_967_296}) end, "1st", "bad value {0,4294967296} for tids"},
            {fn -> :tube.accept(timeout: -1) end, "1st", "bad value -1 for timeout"},
            {fn -> :tube.accept(:bad) end, "1st", "not a map or a list"},
            {fn -> :tube.setopts(t, tmeout: 1) end, "2nd", "unknown option tmeout (known: active, busy_poll, deliver)"},
            {fn -> :tube.setopts(t, %{delivery: :reliable}) end, "2nd", "unknown option delivery"},
            {fn -> :tube.setopts(t, active: 0) end, "2nd", "bad value 0 for active"},
            {fn -> :tube.setopts(t, busy_poll: 100_001) end, "2nd", "bad value 100001 for busy_poll"},
            {fn -> :tube.setopts(:x, active: true) end, "1st", "not a tube"},
            {fn -> :tube.close(:x) end, "1st", "not a tube"},
            {fn -> :tube.info(self()) end, "1st", "not a tube"}
          ] do
        {msg, shell} = badarg_texts(fun)
        assert msg =~ "#{arg} argument: #{text}", "got #{inspect(msg)}"
        n = %{"1st" => 1, "2nd" => 2, "3rd" => 3}[arg]
        assert shell =~ "*** argument #{n}: #{text}", "got #{inspect(shell)}"
      end

      # A bad option changes nothing, even after good ones in the same call.
      :ok = :tube.setopts(t, active: 3)
      {_, _} = badarg_texts(fn -> :tube.setopts(t, [{:active, false}, {:busy_poll, -1}]) end)
      assert mode_now(t) == <<1, 3::64-native>>
      :ok = :tube.close(t)
    end

    test "another driver's port is not a tube" do
      port = Port.open({:spawn, "cat"}, [:binary])
      {msg, _} = badarg_texts(fn -> :tube.setopts(port, active: true) end)
      assert msg =~ "1st argument: not a tube"
      {msg, _} = badarg_texts(fn -> :tube.controlling_process(port, self()) end)
      assert msg =~ "1st argument: not a tube"
      Port.close(port)
    end
  end
end
