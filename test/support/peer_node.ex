defmodule TubeTest.PeerNode do
  @moduledoc false
  # A second BEAM OS process running the tube application, started with
  # OTP's :peer over standard I/O (no distribution needed).

  @doc """
  Starts a peer node with tube started; returns {peer, domid, os_pid}.
  `env` is tube's application env, set before it starts; `os_env` is
  [{name, value}] (strings) for the OS process; `opts`: `tube_ebin: dir` runs
  tube from `dir` (see code_path/1).
  """
  def start(env \\ [], os_env \\ [], opts \\ []) do
    paths = Enum.flat_map(code_path(opts), fn p -> [~c"-pa", p] end)
    os_env = for {k, v} <- os_env, do: {String.to_charlist(k), String.to_charlist(v)}

    start_tube(%{connection: :standard_io, args: paths, wait_boot: 30_000, env: os_env}, env)
  end

  @doc """
  Starts a peer with OTP's `:peer` options `peer_opts`, then tube in it
  with application env `env`; returns {peer, domid, os_pid}.
  """
  def start_tube(peer_opts, env) do
    peer =
      case :peer.start_link(peer_opts) do
        {:ok, pid} -> pid
        {:ok, pid, _node} -> pid
      end

    # Loaded first: loading an application sets its env from the .app file,
    # over what was set before.
    :ok = :peer.call(peer, :application, :load, [:tube])
    for {k, v} <- env, do: :ok = :peer.call(peer, :application, :set_env, [:tube, k, v])
    {:ok, _} = :peer.call(peer, :application, :ensure_all_started, [:tube], 30_000)
    domid = :peer.call(peer, :tube, :domid, [])
    os_pid = :peer.call(peer, :os, :getpid, []) |> List.to_integer()
    {peer, domid, os_pid}
  end

  # This node's code path; with `tube_ebin: dir`, tube's ebin is replaced by
  # `dir` (an ebin whose sibling priv/ holds another build of the library).
  defp code_path(opts) do
    case Keyword.fetch(opts, :tube_ebin) do
      {:ok, dir} ->
        ours = :code.lib_dir(:tube, :ebin)
        for p <- :code.get_path(), do: if(p == ours, do: String.to_charlist(dir), else: p)

      :error ->
        :code.get_path()
    end
  end

  @doc "Runs fun in the peer."
  def call(peer, m, f, a, timeout \\ 30_000), do: :peer.call(peer, m, f, a, timeout)

  @doc "Stops the peer politely."
  def stop(peer) do
    try do
      :peer.stop(peer)
    catch
      _, _ -> :ok
    end
  end

  @doc "kill -9 of the peer's OS process."
  def kill9(os_pid) do
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])
    :ok
  end
end
