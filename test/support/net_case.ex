defmodule TubeTest.NetCase do
  @moduledoc false
  # A case template for tests that need a test network: each test gets its
  # own, started before it and stopped after it (even when it fails), in
  # the context as :net. Its options come from the :net tag:
  #
  #     use TubeTest.NetCase
  #
  #     @tag net: [nodes: 3, net_ticktime: 4]
  #     test "...", %{net: net} do ... end
  #
  # Without the tag the network has two nodes; `@tag net: false` starts none.
  # Node names are unique to this run (unique_names), so that suites running
  # at once on the machine do not take each other's names in epmd; tests
  # name nodes by label, or ask TubeNet.node/2.
  use ExUnit.CaseTemplate

  setup tags do
    case Map.get(tags, :net, []) do
      false ->
        :ok

      opts ->
        {:ok, net} = TubeNet.start(Keyword.merge([nodes: 2, unique_names: true], opts))
        on_exit(fn -> if Process.alive?(net), do: TubeNet.stop(net) end)
        %{net: net}
    end
  end
end
