defmodule DistTest.Hostile do
  @moduledoc false
  # Helpers for the distribution tests with peers that fail or lie during
  # the handshake. Some run inside the nodes of a test network (what is
  # left of their tubes), some in a peer node that is no Erlang node but
  # publishes a node name as the tube carrier does and accepts on the
  # distribution Tids (a listener that never completes a handshake), and
  # some on the test node itself (tubes opened to a node's distribution
  # Tids by a process that is no node).

  @doc "The Tids of distribution tubes, from the shared header."
  def dist_tids,
    do: {TubeTest.Proto.value!(:TUBE_DIST_TID_MIN), TubeTest.Proto.value!(:TUBE_DIST_TID_MAX)}

  # ---- inside the nodes of a test network ---------------------------------

  @doc "The open ports of the tube driver in this node (named \"tube_nif ...\")."
  def tube_ports do
    for p <- :erlang.ports(),
        match?({:name, ~c"tube_nif" ++ _}, :erlang.port_info(p, :name)),
        do: p
  end

  @doc """
  Waits (30 s at most) until the only tube ports of this node are the
  distribution controllers of its connections to `nodes`; the ports it
  holds then besides those (empty if it got there).
  """
  def await_ports_of(nodes, tries \\ 3000) do
    ctrls = for n <- nodes, {^n, ctrl} <- :erlang.system_info(:dist_ctrl), do: ctrl
    extra = tube_ports() -- ctrls

    cond do
      extra == [] and length(ctrls) == length(nodes) -> []
      tries == 0 -> extra
      true -> Process.sleep(10) && await_ports_of(nodes, tries - 1)
    end
  end

  @doc """
  As await_ports_of/2 for the control plane's tubes (being opened or open):
  waits until the only ones left are those of the connections to `nodes`;
  the others then, each as {role, peer domid, tid, state, whether its port
  is open} (empty if it got there).
  """
  def await_tubes_of(nodes, tries \\ 3000) do
    ctrls = for n <- nodes, {^n, ctrl} <- :erlang.system_info(:dist_ctrl), do: ctrl
    ports = tube_ports()

    extra =
      for %{role: r, peer: d, tid: t, state: s, port: p} <- :tube.tubes(),
          p not in ctrls,
          do: {r, d, t, s, p in ports}

    cond do
      extra == [] and length(ctrls) == length(nodes) -> []
      tries == 0 -> extra
      true -> Process.sleep(10) && await_tubes_of(nodes, tries - 1)
    end
  end

  @doc "Waits (30 s at most) until this node is connected to none of `nodes`; those still connected."
  def await_disconnected(nodes, tries \\ 3000) do
    case Enum.filter(nodes, &(&1 in Node.list(:connected))) do
      [] -> []
      left when tries == 0 -> left
      _ -> Process.sleep(10) && await_disconnected(nodes, tries - 1)
    end
  end

  @doc "Waits (30 s at most) until this node has a tube to domain `domid`, open or being opened; true if it saw one."
  def await_tube_to(domid, tries \\ 3000) do
    cond do
      Enum.any?(:tube.tubes(), &(&1.peer == domid)) -> true
      tries == 0 -> false
      true -> Process.sleep(10) && await_tube_to(domid, tries - 1)
    end
  end

  # ---- a listener that is no node -------------------------------------------

  @doc """
  In a node that is not distributed: publishes `name` with the carrier's
  mark, as a node started with tube distribution does, and keeps an accept
  on the distribution Tids pending. Each tube accepted is kept open; the
  first message on the n-th of them is answered with the n-th list of
  `answers` (each element one message; none past the list), and nothing
  else ever is. What arrives and how each tube ends is recorded (see
  `listener_report/0`).
  """
  def start_listener(name, answers \\ []) do
    :ok = :tube_registry.publish_name(name, [:dist])

    pid =
      spawn(fn ->
        me = self()
        spawn_link(fn -> listen_accept(me) end)
        listen_loop(answers, %{accepted: 0, received: [], closed: []})
      end)

    Process.register(pid, :dist_listener)
    :ok
  end

  defp listen_accept(owner) do
    opts = %{tids: dist_tids(), delivery: :reliable, active: false, timeout: :infinity}
    {:ok, t} = :tube.accept(opts)
    :ok = :tube.controlling_process(t, owner)
    send(owner, {:accepted, t})
    listen_accept(owner)
  end

  defp listen_loop(answers, st) do
    receive do
      {:accepted, t} ->
        Process.put({:answer, t}, Enum.at(answers, st.accepted, []))
        :ok = :tube.setopts(t, [{:active, true}])
        listen_loop(answers, %{st | accepted: st.accepted + 1})

      {t, {:data, bin}} when is_port(t) ->
        for m <- Process.put({:answer, t}, []) || [], do: :erlang.port_command(t, m)
        listen_loop(answers, %{st | received: st.received ++ [bin]})

      {:tube_closed, _t, reason} ->
        listen_loop(answers, %{st | closed: st.closed ++ [reason]})

      {:report, from} ->
        send(from, {:report, st})
        listen_loop(answers, st)
    end
  end

  @doc "What the listener saw: accepted (count), received (messages), closed (reasons)."
  def listener_report do
    send(:dist_listener, {:report, self()})

    receive do
      {:report, st} -> st
    after
      10_000 -> :timeout
    end
  end

  # ---- on the test node: a process that is no node ----------------------------

  @doc """
  Opens a reliable tube to domain `domid` on distribution Tid `tid`, as a
  connecting node does, and sends `messages` on it, each as one message
  (a handshake message). The caller owns the tube, in `{active, true}`.
  """
  def open_and_send(domid, tid, messages) do
    {:ok, t} = :tube.open(domid, tid, %{delivery: :reliable, active: true, timeout: 10_000})
    for m <- messages, do: true = :erlang.port_command(t, m)
    t
  end

  @doc """
  A handshake name message ('N', the first one a connecting node sends)
  for node name `name`, followed by `extra` bytes, which the handshake
  ignores.
  """
  def name_message(name, extra \\ <<>>) do
    name = to_string(name)
    # Published, handshake 23, the mandatory flags of OTP 25, spawn, v4
    # node container, alias; no DFLAG_NAME_ME: a static name.
    flags = 0x0000_000D_0500_0001
    <<?N, flags::64, 1::32, byte_size(name)::16, name::binary, extra::binary>>
  end
end
