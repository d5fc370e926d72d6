defmodule NetTest do
  # Test networks (tube_net): nodes, faults and the event log, each fault
  # checked by its effect and by the events it leaves.
  use TubeTest.NetCase, async: false

  alias TubeTest.NetOwner
  import TubeTest.Checks

  defp os_pid!(net, n) do
    {:ok, pid} = TubeNet.os_pid(net, n)
    List.to_string(pid)
  end

  # The state letter of /proc/<pid>/stat ("R", "S", "T", "Z"), nil when gone.
  defp proc_state(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} -> stat |> String.split(") ", parts: 2) |> List.last() |> String.first()
      _ -> nil
    end
  end

  defp gone?(pid), do: proc_state(pid) in [nil, "Z"]

  defp sees(net, n), do: net |> TubeNet.call(n, :erlang, :nodes, []) |> Enum.sort()

  defp down_pairs(as, bs),
    do: for(a <- as, b <- bs, e <- [{:nodedown, a, b}, {:nodedown, b, a}], do: e)

  defp up_pairs(as, bs), do: for(a <- as, b <- bs, e <- [{:nodeup, a, b}, {:nodeup, b, a}], do: e)

  @tag net: false
  test "start: predictable names and domids, a full mesh, and stop leaves nothing behind" do
    {:ok, net} = TubeNet.start(nodes: 3)
    {:ok, host} = :inet.gethostname()
    names = for i <- 1..3, do: :"n#{i}@#{host}"
    assert TubeNet.nodes(net) == names
    assert TubeNet.labels(net) == [:n1, :n2, :n3]

    domids = for n <- [:n1, :n2, :n3], do: TubeNet.domid(net, n)
    [d1 | _] = domids
    assert domids == [d1, d1 + 1, d1 + 2]

    for n <- [:n1, :n2, :n3],
        do: assert(TubeNet.call(net, n, :tube, :domid, []) == TubeNet.domid(net, n))

    for {n, name} <- Enum.zip([:n1, :n2, :n3], names) do
      assert sees(net, n) == names -- [name]
      assert TubeNet.node(net, n) == name
    end

    # Distribution between the nodes goes over tubes.
    [_, n2, n3] = names
    {:ok, info} = TubeNet.call(net, :n2, :net_kernel, :node_info, [n3])
    assert {:net_address, {:tube, _}, _, :tube, :local} = info[:address]
    {:ok, info} = TubeNet.call(net, :n1, :net_kernel, :node_info, [n2])
    assert {:net_address, _, _, :tube, _} = info[:address]

    # start/1 returned after every node was up and every pair connected.
    assert :ok =
             TubeNet.expect(
               net,
               [
                 :net_started,
                 {:unordered, for(n <- [:n1, :n2, :n3], do: {:node_up, n})},
                 {:unordered, up_pairs([:n1], [:n2, :n3]) ++ up_pairs([:n2], [:n3])}
               ],
               0,
               %{from: 0}
             )

    pids = for n <- [:n1, :n2, :n3], do: os_pid!(net, n)
    assert Enum.all?(pids, &(not gone?(&1)))
    for d <- domids, do: assert(exists?("/local/domain/#{d}"))

    assert :ok = TubeNet.stop(net)
    refute Process.alive?(net)
    assert Enum.all?(pids, &gone?/1)
    # Their names are gone from epmd by the time stop/1 returns.
    {:ok, epmd} = :erl_epmd.names({127, 0, 0, 1})
    assert for({name, _} <- epmd, name in [~c"n1", ~c"n2", ~c"n3"], do: name) == []
    for d <- domids, do: wait_until(fn -> not exists?("/local/domain/#{d}") end)
  end

  @tag net: [nodes: 3]
  test "partition: both sides see nodedown, reconnection is refused until heal", %{net: net} do
    partition_and_heal(net)
  end

  @tag net: [nodes: 3, carrier: :tcp]
  test "partition over the TCP carrier: the same, with inet_tcp_dist under the guard", %{net: net} do
    [_, n2, _] = TubeNet.nodes(net)
    {:ok, info} = TubeNet.call(net, :n1, :net_kernel, :node_info, [n2])
    assert {:net_address, _, _, :tcp, :inet} = info[:address]
    partition_and_heal(net)
  end

  defp partition_and_heal(net) do
    [n1, n2, n3] = TubeNet.nodes(net)

    assert :ok = TubeNet.partition(net, [[:n1], [:n2, :n3]])

    assert :ok =
             TubeNet.expect(
               net,
               [{:partition, [[:n1], [:n2, :n3]]}, {:unordered, down_pairs([:n1], [:n2, :n3])}],
               10_000
             )

    assert sees(net, :n1) == []
    assert sees(net, :n2) == [n3]
    # Both directions are refused by the carrier, and say so.
    refute TubeNet.call(net, :n1, :net_kernel, :connect_node, [n2])
    refute TubeNet.call(net, :n3, :net_kernel, :connect_node, [n1])
    assert :pang = TubeNet.call(net, :n2, :net_adm, :ping, [n1])

    assert :ok =
             TubeNet.expect(
               net,
               [{:unordered, [{:refused, :n1, :n2}, {:refused, :n3, :n1}]}],
               10_000
             )

    # The accepting side refuses too: n2 forgets the partition, n1 still
    # turns it away in the handshake.
    :ok = TubeNet.call(net, :n2, :tube_net_guard, :clear, [])
    assert TubeNet.call(net, :n2, :tube_net_guard, :permit, [n1])
    refute TubeNet.call(net, :n2, :net_kernel, :connect_node, [n1])
    assert sees(net, :n1) == []

    assert :ok = TubeNet.heal(net)
    assert :ok = TubeNet.expect(net, [:heal, {:unordered, up_pairs([:n1], [:n2, :n3])}], 10_000)
    assert sees(net, :n1) == [n2, n3]
    assert sees(net, :n2) == [n1, n3]
  end

  @tag net: false
  test "start: code paths, applications and domids as asked" do
    dir = Path.join(System.tmp_dir!(), "tube-net-paths-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    src = Path.join(dir, "net_paths_probe.erl")

    File.write!(
      src,
      "-module(net_paths_probe).\n-export([hello/0]).\nhello() -> {hello, node()}.\n"
    )

    {:ok, _} = :compile.file(to_charlist(src), outdir: to_charlist(dir))

    {:ok, net} =
      TubeNet.start(nodes: 2, domids: [41, 43], apps: [:tube, :sasl], code_paths: [dir])

    on_exit(fn -> if Process.alive?(net), do: TubeNet.stop(net) end)
    [n1, _] = TubeNet.nodes(net)
    assert TubeNet.call(net, :n1, :net_paths_probe, :hello, []) == {:hello, n1}

    assert {:sasl, _, _} =
             List.keyfind(TubeNet.call(net, :n2, :application, :which_applications, []), :sasl, 0)

    assert [41, 43] == for(n <- [:n1, :n2], do: TubeNet.call(net, n, :tube, :domid, []))
    assert [41, 43] == for(n <- [:n1, :n2], do: TubeNet.domid(net, n))

    # A second network beside it, with its own prefix and domids.
    {:ok, other} = TubeNet.start(nodes: 2, prefix: "m", domids: [51, 52])
    on_exit(fn -> if Process.alive?(other), do: TubeNet.stop(other) end)
    [m1, m2] = TubeNet.nodes(other)
    assert TubeNet.labels(other) == [:m1, :m2]
    assert TubeNet.call(other, :m1, :erlang, :nodes, []) == [m2]
    assert TubeNet.call(net, :n1, :erlang, :nodes, []) == [TubeNet.node(net, :n2)]
    assert TubeNet.call(other, :m2, :erlang, :node, []) == m2 and m1 != n1
    :ok = TubeNet.stop(other)
    :ok = TubeNet.stop(net)
  end

  @tag net: [nodes: 2]
  test "partition: a node restarted during a partition stays on its side until heal", %{net: net} do
    [n1, n2] = TubeNet.nodes(net)
    :ok = TubeNet.partition(net, [[:n1], [:n2]])
    :ok = TubeNet.kill(net, :n2)
    :ok = TubeNet.restart(net, :n2)

    assert :ok =
             TubeNet.expect(
               net,
               [{:killed, :n2}, {:node_down, :n2, :killed}, {:node_up, :n2}],
               10_000
             )

    assert sees(net, :n2) == []
    refute TubeNet.call(net, :n2, :net_kernel, :connect_node, [n1])
    :ok = TubeNet.heal(net)
    assert :ok = TubeNet.expect(net, [:heal, {:unordered, up_pairs([:n1], [:n2])}], 10_000)
    assert sees(net, :n1) == [n2]
  end

  @tag net: [nodes: 3, net_ticktime: 4]
  test "pause and resume: SIGSTOP freezes the node, its peers time it out, SIGCONT brings it back",
       %{net: net} do
    [n1, n2, _n3] = TubeNet.nodes(net)
    pid = os_pid!(net, :n1)

    assert :ok = TubeNet.pause(net, :n1)
    assert proc_state(pid) == "T"
    assert {:error, :paused} = TubeNet.call(net, :n1, :erlang, :node, [])
    assert {:error, :running} = TubeNet.resume(net, :n2)
    # Ticks stop: the others drop it after net_ticktime.
    assert :ok =
             TubeNet.expect(
               net,
               [{:paused, :n1}, {:unordered, [{:nodedown, :n2, :n1}, {:nodedown, :n3, :n1}]}],
               30_000
             )

    assert :ok = TubeNet.resume(net, :n1)
    refute proc_state(pid) == "T"
    assert :ok = TubeNet.expect(net, [{:resumed, :n1}], 10_000)
    assert TubeNet.call(net, :n1, :erlang, :node, []) == n1
    wait_until(fn -> TubeNet.call(net, :n1, :net_adm, :ping, [n2]) == :pong end)

    # A paused node is stopped too, and a stopped network stops again quietly.
    paused = os_pid!(net, :n3)
    :ok = TubeNet.pause(net, :n3)
    assert :ok = TubeNet.stop(net)
    assert gone?(paused) and gone?(pid)
    assert :ok = TubeNet.stop(net)
  end

  @tag net: [nodes: 3]
  test "kill and restart: kill -9 ends the OS process, restart brings the same node back", %{
    net: net
  } do
    [n1, n2, n3] = TubeNet.nodes(net)
    d2 = TubeNet.domid(net, :n2)
    pid = os_pid!(net, :n2)

    assert :ok = TubeNet.kill(net, :n2)
    assert gone?(pid)
    assert {:error, :down} = TubeNet.call(net, :n2, :erlang, :node, [])
    assert {:error, :down} = TubeNet.kill(net, :n2)

    assert :ok =
             TubeNet.expect(
               net,
               [
                 {:killed, :n2},
                 {:unordered,
                  [{:node_down, :n2, :killed}, {:nodedown, :n1, :n2}, {:nodedown, :n3, :n2}]}
               ],
               10_000
             )

    assert sees(net, :n1) == [n3]
    wait_until(fn -> not exists?("/local/domain/#{d2}") end)

    assert :ok = TubeNet.restart(net, :n2)
    refute os_pid!(net, :n2) == pid

    assert :ok =
             TubeNet.expect(
               net,
               [{:node_up, :n2}, {:unordered, up_pairs([:n2], [:n1, :n3])}],
               10_000
             )

    assert TubeNet.call(net, :n2, :erlang, :node, []) == n2
    assert TubeNet.call(net, :n2, :tube, :domid, []) == d2
    assert TubeNet.call(net, :n1, :erpc, :call, [n2, :erlang, :node, []]) == n2
    assert sees(net, :n2) == [n1, n3]

    # A node that ends by itself is seen going too.
    # (The call cannot return: its node is gone before it can answer.)
    catch_exit(TubeNet.call(net, :n3, :erlang, :halt, [0]))

    assert :ok =
             TubeNet.expect(
               net,
               [
                 {:unordered,
                  [{:node_down, :n3, :exited}, {:nodedown, :n1, :n3}, {:nodedown, :n2, :n3}]}
               ],
               10_000
             )

    assert {:error, :down} = TubeNet.call(net, :n3, :erlang, :node, [])
  end

  defp tube_between(net, tid) do
    {:ok, acceptor} = TubeNet.call(net, :n2, NetOwner, :accept, [])
    {:ok, opener} = TubeNet.call(net, :n1, NetOwner, :open, [:n2, tid])

    assert :ok =
             TubeNet.expect(
               net,
               [{:unordered, [{:tube_up, :n1, :n2, tid}, {:tube_up, :n2, :n1, tid}]}],
               10_000
             )

    {opener, acceptor}
  end

  @tag net: [nodes: 2]
  test "raw tubes: a partition closes them and refuses new ones until heal", %{net: net} do
    {opener, acceptor} = tube_between(net, 7)

    :ok = TubeNet.partition(net, [[:n1], [:n2]])
    assert %{closed: c1} = TubeNet.call(net, :n1, NetOwner, :wait_closed, [opener])
    assert %{closed: c2} = TubeNet.call(net, :n2, NetOwner, :wait_closed, [acceptor])
    assert c1 != nil and c2 != nil

    assert :ok =
             TubeNet.expect(
               net,
               [
                 {:partition, :_},
                 {:unordered, [{:tube_down, :n1, :n2, 7}, {:tube_down, :n2, :n1, 7}]}
               ],
               10_000
             )

    assert {:error, :partitioned} =
             TubeNet.call(net, :n1, :tube_net_link, :open, [:n2, 8, %{timeout: 1_000}])

    :ok = TubeNet.heal(net)
    {o2, a2} = tube_between(net, 8)
    TubeNet.call(net, :n1, NetOwner, :send_packets, [o2, ["after heal"]])
    assert %{packets: ["after heal"]} = TubeNet.call(net, :n2, NetOwner, :wait, [a2, 1])
  end

  @tag net: [nodes: 2]
  test "slow: packets sent through tube_net_link wait the latency, in order", %{net: net} do
    {opener, acceptor} = tube_between(net, 3)
    packets = for i <- 1..20, do: "p#{i}"

    assert :ok = TubeNet.slow(net, :n1, :n2, 300)
    assert :ok = TubeNet.expect(net, [{:slow, :n1, :n2, 300}], 0)
    t0 = System.monotonic_time(:millisecond)

    assert Enum.all?(
             TubeNet.call(net, :n1, NetOwner, :send_packets, [opener, packets]),
             &(&1 == :ok)
           )

    assert %{packets: ^packets} = TubeNet.call(net, :n2, NetOwner, :wait, [acceptor, 20])
    # A lower bound only: a loaded machine makes it later, never sooner.
    assert System.monotonic_time(:millisecond) - t0 >= 300

    assert %{info: %{net_delayed: 20, sent: 20}} =
             TubeNet.call(net, :n1, NetOwner, :state_of, [opener])

    # Both directions, and 0 removes it.
    :ok = TubeNet.slow(net, :n2, :n1, 0)
    TubeNet.call(net, :n2, NetOwner, :send_packets, [acceptor, ["back"]])
    assert %{packets: ["back"]} = TubeNet.call(net, :n1, NetOwner, :wait, [opener, 1])
    assert %{info: %{net_delayed: 0}} = TubeNet.call(net, :n2, NetOwner, :state_of, [acceptor])
  end

  @tag net: [nodes: 2]
  test "loss: packets sent through tube_net_link are dropped at the ratio and counted", %{
    net: net
  } do
    {opener, acceptor} = tube_between(net, 4)
    send = fn packets -> TubeNet.call(net, :n1, NetOwner, :send_packets, [opener, packets]) end

    # Everything lost: the first packet to arrive is the one sent after loss ends.
    assert :ok = TubeNet.loss(net, :n1, :n2, 1)
    send.(for i <- 1..50, do: "lost#{i}")
    :ok = TubeNet.loss(net, :n1, :n2, 0)
    send.(["marker"])
    assert %{packets: ["marker"]} = TubeNet.call(net, :n2, NetOwner, :wait, [acceptor, 1])
    assert :ok = TubeNet.expect(net, [{:loss, :n1, :n2, 1.0}, {:loss, :n1, :n2, 0.0}], 0)

    # Half lost: what is not dropped by the network arrives, in order.
    :ok = TubeNet.loss(net, :n2, :n1, 0.5)
    sent = for i <- 1..400, do: "half#{i}"
    send.(sent)
    :ok = TubeNet.loss(net, :n1, :n2, 0)
    send.(["end"])
    s = TubeNet.call(net, :n2, NetOwner, :wait, [acceptor, 1])
    s = wait_until_last(net, acceptor, "end", s)
    %{info: info} = TubeNet.call(net, :n1, NetOwner, :state_of, [opener])
    dropped = info.net_dropped - 50
    got = Enum.drop(s.packets, 1) -- ["end"]
    assert dropped > 0 and dropped < 400
    assert length(got) + dropped + info.dropped == 400
    assert got == Enum.filter(sent, &(&1 in got))
  end

  defp wait_until_last(net, owner, last, s) do
    if List.last(s.packets) == last,
      do: s,
      else:
        wait_until_last(
          net,
          owner,
          last,
          TubeNet.call(net, :n2, NetOwner, :wait, [owner, s.count + 1])
        )
  end

  @tag net: [nodes: 3]
  test "slow_dist: a slowed link carries distribution late through a relay, 0 puts it back on its tube",
       %{net: net} do
    [n1, n2, n3] = TubeNet.nodes(net)
    carrier = fn a, b -> TubeNet.call(net, a, DistTest.Node, :carrier, [b]) end

    erpc = fn timeout ->
      TubeNet.call(net, :n1, :erpc, :call, [n2, :erlang, :node, [], timeout])
    end

    # A slow_dist setting on the n1-n2 link, seen (from the last mark) as
    # the setting, then that link going down and coming up again, both ways.
    relinked = fn a, b, ms ->
      TubeNet.expect(
        net,
        [
          {:slow_dist, a, b, ms},
          {:unordered, down_pairs([:n1], [:n2])},
          {:unordered, up_pairs([:n1], [:n2])}
        ],
        0
      )
    end

    assert :ok = TubeNet.slow_dist(net, :n1, :n2, 300)

    assert :ok = relinked.(:n1, :n2, 300)

    assert carrier.(:n1, n2) == :tcp and carrier.(:n2, n1) == :tcp
    assert TubeNet.call(net, :n1, :tube_net_guard, :routed, []) == [n2]
    # The other links keep their tubes.
    assert carrier.(:n1, n3) == :tube and carrier.(:n2, n3) == :tube

    # A call waits a round trip (two latencies) at least: a shorter timeout
    # expires, a longer one gets the answer.
    t0 = System.monotonic_time(:millisecond)
    assert erpc.(10_000) == n2
    # A lower bound only: a loaded machine makes it later, never sooner.
    assert System.monotonic_time(:millisecond) - t0 >= 600
    assert catch_error(erpc.(100)) == {:erpc, :timeout}

    # A node restarted while its link is slow comes back slow.
    :ok = TubeNet.restart(net, :n2)
    assert carrier.(:n1, n2) == :tcp and carrier.(:n3, n2) == :tube

    # 0: the link is set up again on its tube, nothing routed elsewhere.
    TubeNet.mark(net)
    assert :ok = TubeNet.slow_dist(net, :n2, :n1, 0)

    assert :ok = relinked.(:n2, :n1, 0)

    assert carrier.(:n1, n2) == :tube and carrier.(:n2, n1) == :tube
    assert TubeNet.call(net, :n1, :tube_net_guard, :routed, []) == []
    assert TubeNet.call(net, :n2, :tube_net_guard, :routed, []) == []
    assert erpc.(10_000) == n2
    assert_raise ArgumentError, fn -> TubeNet.slow_dist(net, :n1, :n2, -1) end
    assert {:error, {:badarg, :same_node}} = TubeNet.slow_dist(net, :n1, :n1, 5)
  end

  @tag net: [nodes: 2]
  test "expect: order, unordered groups, wildcards, predicates, and a timeout that says what is missing",
       %{net: net} do
    seq = TubeNet.mark(net)
    :ok = TubeNet.slow(net, :n1, :n2, 5)
    :ok = TubeNet.loss(net, :n1, :n2, 0.25)

    assert :ok =
             TubeNet.expect(
               net,
               [{:slow, :_, :_, 5}, {:loss, :n1, :n2, fn r -> r > 0.2 end}],
               0,
               %{from: seq}
             )

    assert :ok =
             TubeNet.expect(net, [{:unordered, [{:loss, :_, :_, :_}, {:slow, :_, :_, :_}]}], 0, %{
               from: seq
             })

    assert {:error, {:timeout, [{:slow, :_, :_, :_}], [_, _]}} =
             TubeNet.expect(net, [{:loss, :_, :_, :_}, {:slow, :_, :_, :_}], 50, %{from: seq})

    # The cursor: what one expect matched is behind the next one.
    assert :ok = TubeNet.expect(net, [{:slow, :_, :_, :_}], 0)
    assert {:error, {:timeout, _, _}} = TubeNet.expect(net, [{:slow, :_, :_, :_}], 0)

    # A waiting expect is answered by the event it waits for.
    waiter = Task.async(fn -> TubeNet.expect(net, [{:slow, :n1, :n2, 9}], 30_000) end)
    :ok = TubeNet.slow(net, :n1, :n2, 9)
    assert :ok = Task.await(waiter, 35_000)
  end

  @tag net: false
  test "the log's matcher: subsequences, groups, wildcards, predicates and maps" do
    log =
      Enum.reduce([{:a, 1}, {:b, 2}, {:c, %{x: 1, y: 2}}, {:b, 3}], :tube_net_log.new(), fn e,
                                                                                            l ->
        {_, l} = :tube_net_log.add(e, 0, l)
        l
      end)

    entries = :tube_net_log.entries(log)
    assert [{1, 0, {:a, 1}} | _] = entries
    assert {:ok, 4} = :tube_net_log.match([{:a, :_}, {:b, 3}], entries)
    assert {:ok, 2} = :tube_net_log.match([{:a, :_}, {:b, :_}], entries)
    assert {:more, [{:a, :_}]} = :tube_net_log.match([{:b, :_}, {:a, :_}], entries)
    # One entry takes one pattern of a group: two {:b, _} need two entries.
    assert {:ok, 4} = :tube_net_log.match([{:unordered, [{:b, :_}, {:b, :_}]}], entries)

    assert {:more, [{:unordered, [{:b, :_}]}]} =
             :tube_net_log.match([{:unordered, [{:b, :_}, {:b, :_}, {:b, :_}]}], entries)

    assert {:ok, 3} = :tube_net_log.match([{:c, %{y: 2}}], entries)
    assert {:more, _} = :tube_net_log.match([{:c, %{z: 2}}], entries)
    assert {:ok, 4} = :tube_net_log.match([{:b, fn n -> n > 2 end}], entries)
    assert [{4, 0, {:b, 3}}] = :tube_net_log.entries_after(3, log)
    assert {:ok, 0} = :tube_net_log.match([], entries)
  end

  test "bad input gets a clear answer", %{net: net} do
    assert {:error, {:badarg, :nodes}} = TubeNet.start(nodes: 0)
    assert {:error, {:badarg, :nodes}} = TubeNet.start(nodes: -5, node_opts: %{n1: %{}})
    assert {:error, {:badarg, :domids}} = TubeNet.start(nodes: 2, domids: [5, 5])
    assert {:error, {:badarg, :overlapping_groups}} = TubeNet.partition(net, [[:n1], [:n1, :n2]])
    assert {:error, {:badarg, {:unknown_node, :n9}}} = TubeNet.partition(net, [[:n9]])
    assert {:error, {:unknown_node, :n9}} = TubeNet.pause(net, :n9)
    assert {:error, {:badarg, :same_node}} = TubeNet.slow(net, :n1, :n1, 5)
    assert_raise ArgumentError, fn -> TubeNet.slow(net, :n1, :n2, -1) end
    assert_raise ArgumentError, fn -> TubeNet.loss(net, :n1, :n2, 2) end
    assert_raise ArgumentError, fn -> TubeNet.node(net, :n9) end
    assert {:error, :unknown_peer} = TubeNet.call(net, :n1, :tube_net_link, :open, [:n9, 1, %{}])

    assert {:error, {:badarg, :node_opts}} =
             TubeNet.start(nodes: 2, node_opts: %{n3: %{carrier: :tcp}})

    assert {:error, {:badarg, :node_opts}} =
             TubeNet.start(nodes: 2, node_opts: %{n1: %{carrier: :udp}})

    assert {:error, {:badarg, :node_opts}} =
             TubeNet.start(nodes: 2, node_opts: %{n1: %{colour: :red}})

    assert {:error, {:badarg, :env}} = :tube_net.start(%{nodes: 2, env: [{~c"A", 1}]})
    assert {:error, {:badarg, :unique_names}} = TubeNet.start(nodes: 2, unique_names: :yes)
  end

  @tag net: [
         nodes: 3,
         env: [TUBE_NET_PROBE: "net", TUBE_NET_OTHER: "net"],
         node_opts: %{
           n2: %{carrier: :tcp, env: [TUBE_NET_PROBE: "n2"]},
           n3: %{args: ["-tube_net_probe", "n3"]}
         }
       ]
  test "start: a node's own carrier, arguments and environment, kept across its restart", %{
    net: net
  } do
    [n1, n2, n3] = TubeNet.nodes(net)
    # NetCase asks for names unique to this run: labels stay n1..n3.
    {:ok, host} = :inet.gethostname()
    os_pid = System.pid()

    for {n, i} <- Enum.with_index([n1, n2, n3], 1),
        do: assert(Atom.to_string(n) =~ ~r/^n#{i}_#{os_pid}x\d+@#{host}$/)

    assert TubeNet.labels(net) == [:n1, :n2, :n3]
    getenv = fn n, v -> TubeNet.call(net, n, :os, :getenv, [v]) end
    carrier = fn n, m -> TubeNet.call(net, n, DistTest.Node, :carrier, [m]) end

    check = fn ->
      assert getenv.(:n1, ~c"TUBE_NET_PROBE") == ~c"net"
      assert getenv.(:n2, ~c"TUBE_NET_PROBE") == ~c"n2"
      assert getenv.(:n2, ~c"TUBE_NET_OTHER") == ~c"net"
      assert TubeNet.call(net, :n3, :init, :get_argument, [:tube_net_probe]) == {:ok, [[~c"n3"]]}
      assert TubeNet.call(net, :n1, :init, :get_argument, [:tube_net_probe]) == :error
      # n2 is TCP-only: the others reach it over TCP, and each other over tubes.
      assert carrier.(:n1, n2) == :tcp and carrier.(:n3, n2) == :tcp
      assert carrier.(:n1, n3) == :tube
      assert sees(net, :n2) == [n1, n3]
    end

    check.()
    :ok = TubeNet.restart(net, :n2)
    :ok = TubeNet.restart(net, :n3)
    check.()
  end

  @tag net: false
  test "the README's example is this file's GlobalServiceTest, word for word" do
    readme = File.read!("README.md")
    [_, section] = String.split(readme, "## Test networks", parts: 2)
    [_, example, _] = String.split(section, ~r/^```elixir\n|^```\n/m, parts: 3)
    assert String.contains?(File.read!(__ENV__.file), example)
  end
end

defmodule GlobalServiceTest do
  use ExUnit.Case, async: false

  # A counter registered in :global on three nodes. A partition leaves it on
  # the minority side; the majority starts its own; when the network heals,
  # :global keeps one of the two and every node agrees on it.
  test "a global service survives a partition and heals" do
    {:ok, net} = TubeNet.start(nodes: 3, unique_names: true)
    on_exit(fn -> if Process.alive?(net), do: TubeNet.stop(net) end)

    # Agent.start(Function, :identity, [0], name: ...) in the given node.
    start_counter = fn node ->
      args = [Function, :identity, [0], [name: {:global, :counter}]]
      TubeNet.call(net, node, Agent, :start, args)
    end

    whereis = fn node -> TubeNet.call(net, node, :global, :whereis_name, [:counter]) end

    {:ok, first} = start_counter.(:n1)
    assert Enum.map([:n1, :n2, :n3], whereis) == [first, first, first]

    :ok = TubeNet.partition(net, [[:n1], [:n2, :n3]])
    :ok = TubeNet.expect(net, [{:nodedown, :n2, :n1}], 10_000)
    :ok = TubeNet.call(net, :n2, :global, :sync, [])
    assert whereis.(:n2) == :undefined
    assert whereis.(:n1) == first
    {:ok, second} = start_counter.(:n2)
    assert whereis.(:n3) == second

    :ok = TubeNet.heal(net)
    for node <- [:n1, :n2, :n3], do: :ok = TubeNet.call(net, node, :global, :sync, [])
    [winner, winner, winner] = Enum.map([:n1, :n2, :n3], whereis)
    assert winner in [first, second]
    assert TubeNet.call(net, node(winner), Process, :alive?, [winner])

    :ok = TubeNet.stop(net)
  end
end
