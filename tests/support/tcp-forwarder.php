<?php
/**
 * A TCP forwarder for failover tests: listens on a loopback port and relays every connection
 * to an upstream server. Commands, one per line on stdin, each answered with one line:
 *   down       drop every relayed connection and stop listening (new connections are refused)
 *   up PORT    listen again on the same port, relaying to 127.0.0.1:PORT from now on
 *   quit
 * Prints "port N" first. Usage: php tcp-forwarder.php UPSTREAM_PORT
 * (tests/support/TcpForwarder.php drives it.)
 */

declare(strict_types=1);

$upstream = (int) $argv[1];
$listen = function (int $port) {
    $server = stream_socket_server("tcp://127.0.0.1:$port", $errno, $errstr);
    if ($server === false) {
        fwrite(STDERR, "cannot listen on $port: $errstr\n");
        exit(2);
    }
    return $server;
};
$server = $listen(0);
$port = (int) explode(':', (string) stream_socket_get_name($server, false))[1];
echo "port $port\n";

/** @var array<int, resource> $peer socket id => the socket it relays to */
$peer = [];
$sockets = [];
$close = function ($s) use (&$peer, &$sockets): void {
    $id = (int) $s;
    if (!isset($sockets[$id])) {
        return;
    }
    $other = $peer[$id];
    foreach ([$s, $other] as $x) {
        unset($peer[(int) $x], $sockets[(int) $x]);
        @fclose($x);
    }
};

while (true) {
    $read = array_values($sockets);
    $read[] = STDIN;
    if ($server !== null) {
        $read[] = $server;
    }
    $write = $except = null;
    if (@stream_select($read, $write, $except, null) === false) {
        continue;
    }
    foreach ($read as $s) {
        if ($s === STDIN) {
            $line = fgets(STDIN);
            $words = $line === false ? ['quit'] : preg_split('/\s+/', trim($line));
            switch ($words[0]) {
                case 'down':
                    foreach ($sockets as $x) {
                        $close($x);
                    }
                    if ($server !== null) {
                        fclose($server);
                        $server = null;
                    }
                    echo "ok\n";
                    break;
                case 'up':
                    $upstream = (int) ($words[1] ?? $upstream);
                    $server ??= $listen($port);
                    echo "ok\n";
                    break;
                case 'quit':
                    exit(0);
            }
        } elseif ($s === $server) {
            $client = @stream_socket_accept($server, 0);
            if ($client === false) {
                continue;
            }
            $up = @stream_socket_client("tcp://127.0.0.1:$upstream", $errno, $errstr, 2);
            if ($up === false) {
                fclose($client); // upstream down: the client sees the connection closed
                continue;
            }
            $peer[(int) $client] = $up;
            $peer[(int) $up] = $client;
            $sockets[(int) $client] = $client;
            $sockets[(int) $up] = $up;
        } elseif (isset($sockets[(int) $s])) {
            $data = @fread($s, 65536);
            if ($data === false || ($data === '' && feof($s))) {
                $close($s);
            } elseif ($data !== '') {
                @fwrite($peer[(int) $s], $data);
            }
        }
    }
}
