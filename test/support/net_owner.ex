defmodule TubeTest.NetOwner do
  @moduledoc false
  # Owners of raw tubes opened through :tube_net_link inside the nodes of a
  # test network, driven from the test with TubeNet.call/5 (which runs each
  # call in a short-lived process of the node, so a tube needs an owner
  # that outlives it). Each owner is a registered process holding one tube;
  # it collects what arrives and tells waiters when enough has arrived or
  # the tube closed.

  @doc "Opens tube `tid` to `peer` in a new owner. {:ok, name} | {:error, reason}."
  def open(peer, tid, opts \\ %{}),
    do: start_owner(fn -> :tube_net_link.open(peer, tid, Map.merge(%{timeout: 10_000}, opts)) end)

  @doc "Accepts one tube in a new owner (the call returns at once). {:ok, name}."
  def accept(opts \\ %{}) do
    name = new_name()
    parent = self()
    ref = make_ref()

    spawn(fn ->
      Process.register(self(), name)
      send(parent, {ref, :registered})

      case :tube_net_link.accept(Map.merge(%{timeout: 10_000}, opts)) do
        {:ok, port} -> loop(state(port))
        error -> loop(%{state(nil) | closed: error})
      end
    end)

    receive do
      {^ref, :registered} -> {:ok, name}
    end
  end

  @doc "Sends each packet through :tube_net_link.send/2."
  def send_packets(name, packets), do: call(name, {:send, packets})

  @doc "Waits (in the node) until `n` packets arrived or the tube closed; the owner's state."
  def wait(name, n, timeout \\ 20_000), do: call(name, {:wait, n}, timeout)

  @doc "Waits until the tube closed; the reason."
  def wait_closed(name, timeout \\ 20_000), do: call(name, :wait_closed, timeout)

  @doc "The owner's state now: packets, count, closed, info."
  def state_of(name), do: call(name, :state)

  defp call(name, msg, timeout \\ 20_000) do
    ref = make_ref()
    send(name, {msg, self(), ref})

    receive do
      {^ref, reply} -> reply
    after
      timeout -> {:error, :owner_timeout}
    end
  end

  defp start_owner(fun) do
    parent = self()
    ref = make_ref()
    name = new_name()

    spawn(fn ->
      Process.register(self(), name)

      case fun.() do
        {:ok, port} ->
          send(parent, {ref, {:ok, name}})
          loop(state(port))

        error ->
          send(parent, {ref, error})
      end
    end)

    receive do
      {^ref, reply} -> reply
    end
  end

  defp new_name, do: :"net_owner_#{System.unique_integer([:positive])}"

  defp state(port), do: %{port: port, packets: [], count: 0, closed: nil, waiters: []}

  defp loop(st) do
    port = st.port

    receive do
      {^port, {:data, data}} ->
        st
        |> Map.update!(:packets, &[data | &1])
        |> Map.update!(:count, &(&1 + 1))
        |> wake()
        |> loop()

      {:tube_closed, ^port, reason} ->
        loop(wake(%{st | closed: reason}))

      {{:send, packets}, from, ref} ->
        res = Enum.map(packets, fn p -> safe(fn -> :tube_net_link.send(port, p) end) end)
        send(from, {ref, res})
        loop(st)

      {{:wait, n}, from, ref} ->
        loop(wake(%{st | waiters: [{{:count, n}, from, ref} | st.waiters]}))

      {:wait_closed, from, ref} ->
        loop(wake(%{st | waiters: [{:closed, from, ref} | st.waiters]}))

      {:state, from, ref} ->
        send(from, {ref, report(st)})
        loop(st)
    end
  end

  defp wake(st) do
    {done, left} =
      Enum.split_with(st.waiters, fn
        {{:count, n}, _, _} -> st.count >= n or st.closed != nil
        {:closed, _, _} -> st.closed != nil
      end)

    for {_, from, ref} <- done, do: send(from, {ref, report(st)})
    %{st | waiters: left}
  end

  defp report(st) do
    info =
      case st.port && :tube_net_link.info(st.port) do
        {:ok, i} -> i
        _ -> nil
      end

    %{packets: Enum.reverse(st.packets), count: st.count, closed: st.closed, info: info}
  end

  defp safe(fun) do
    try do
      fun.()
    rescue
      ArgumentError -> :badarg
    end
  end
end
