defmodule TubeTest.Proto do
  @moduledoc false
  # The numbers the driver and the Erlang side share (port-control codes and
  # the like), read from include/tube_proto.hrl, which the build generates
  # from native/tube_ring/src/proto.rs: a test addresses the driver with the
  # numbers the library itself uses, never a copy of its own.

  @hrl Path.expand("../../include/tube_proto.hrl", __DIR__)
  @external_resource @hrl

  @defines (for line <- String.split(File.read!(@hrl), "\n"),
                [_, name, value] <- [Regex.run(~r/^-define\((TUBE_\w+), (\d+)\)\.$/, line) || []],
                into: %{},
                do: {String.to_atom(name), String.to_integer(value)})

  @doc "The integer `-define`d as `name` (an atom such as `:TUBE_CTL_ACTIVE`); raises for an unknown name."
  def value!(name), do: Map.fetch!(@defines, name)
end
