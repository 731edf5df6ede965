%% erlbridge_epmd: an `-epmd_module` that lets a local Erlang node reach the pod nodes
%% erlbridge bridges, with no privilege, no NAT and no route to the pod network.
%%
%% A node started with `-pa DIR -epmd_module erlbridge_epmd` asks address_please/3 where
%% `Name@Host` is. For a bridged node the answer is erlbridge's local forward of that node's
%% distribution port, with the distribution version the pod's epmd reported, so neither DNS
%% nor an EPMD query is needed and the node name stays exactly as it is (the handshake checks
%% it). Every other call, and every node erlbridge does not bridge, goes to erl_epmd, so the
%% local node's own registration and its other connections work as usual.
%%
%% The map lives in `nodes.eterm` beside this module's .beam, one term per bridged node:
%%   {"app", "10.244.1.8", 40123, 6}.    % {Alive, Host, LocalPort, Version}
%% erlbridge rewrites it atomically on every change, and it is read on every call, so a
%% running node follows pods that come back at new addresses.
-module(erlbridge_epmd).

-export([start_link/0, register_node/2, register_node/3, port_please/2, port_please/3,
         listen_port_please/2, names/0, names/1, address_please/3]).

start_link() -> erl_epmd:start_link().

register_node(Name, Port) -> erl_epmd:register_node(Name, Port).

register_node(Name, Port, Family) -> erl_epmd:register_node(Name, Port, Family).

port_please(Name, Host) -> erl_epmd:port_please(Name, Host).

port_please(Name, Host, Timeout) -> erl_epmd:port_please(Name, Host, Timeout).

listen_port_please(Name, Host) -> erl_epmd:listen_port_please(Name, Host).

names() -> erl_epmd:names().

names(Host) -> erl_epmd:names(Host).

address_please(Name, Host, Family) ->
    case lookup(to_string(Name), string:lowercase(to_string(Host))) of
        {ok, Port, Version} -> {ok, loopback(Family), Port, Version};
        none -> erl_epmd:address_please(Name, Host, Family)
    end.

lookup(Name, Host) ->
    case file:consult(map_file()) of
        {ok, Terms} -> find(Name, Host, Terms);
        {error, _} -> none
    end.

find(Name, Host, [{Name, MapHost, Port, Version} | Rest]) ->
    case string:lowercase(MapHost) of
        Host -> {ok, Port, Version};
        _ -> find(Name, Host, Rest)
    end;
find(Name, Host, [_ | Rest]) -> find(Name, Host, Rest);
find(_, _, []) -> none.

map_file() ->
    filename:join(filename:dirname(code:which(?MODULE)), "nodes.eterm").

loopback(inet6) -> {0, 0, 0, 0, 0, 0, 0, 1};
loopback(_) -> {127, 0, 0, 1}.

to_string(A) when is_atom(A) -> atom_to_list(A);
to_string(S) -> S.
