<?php
/**
 * Drives tests/support/tcp-forwarder.php: clients connect to port(); down() drops every
 * connection and refuses new ones (an outage, or a failover's switch of the address); up($port)
 * takes connections again and relays them to another server from then on.
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

final class TcpForwarder
{
    /** @var resource */
    private $proc;
    /** @var resource[] */
    private array $pipes = [];
    private int $port;

    public static function start(int $upstreamPort): self
    {
        $f = new self();
        $f->proc = proc_open([PHP_BINARY, '-n', __DIR__ . '/tcp-forwarder.php', (string) $upstreamPort],
            [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['file', '/dev/null', 'a']], $f->pipes);
        $line = (string) fgets($f->pipes[1]);
        if (!preg_match('/^port (\d+)/', $line, $m)) {
            throw new \RuntimeException("the forwarder did not start: $line");
        }
        $f->port = (int) $m[1];
        return $f;
    }

    public function port(): int
    {
        return $this->port;
    }

    public function down(): void
    {
        $this->command('down');
    }

    public function up(int $upstreamPort): void
    {
        $this->command("up $upstreamPort");
    }

    private function command(string $line): void
    {
        fwrite($this->pipes[0], "$line\n");
        if (trim((string) fgets($this->pipes[1])) !== 'ok') {
            throw new \RuntimeException("the forwarder did not take '$line'");
        }
    }

    public function stop(): void
    {
        if (is_resource($this->proc)) {
            @fwrite($this->pipes[0], "quit\n");
            foreach ($this->pipes as $p) {
                @fclose($p);
            }
            proc_terminate($this->proc, SIGKILL);
            proc_close($this->proc);
        }
    }

    public function __destruct()
    {
        $this->stop();
    }
}
