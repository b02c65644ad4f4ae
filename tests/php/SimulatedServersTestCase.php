<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

/**
 * Tests with several archiving servers on this machine, each in its own host and pid namespace
 * (skipped, never passed, without root), stopped after each test; and the waits they share.
 */
abstract class SimulatedServersTestCase extends ExtensionTestCase
{
    /** @var array<string, SimulatedServer> */
    protected array $servers = [];

    protected function setUp(): void
    {
        if (!SimulatedServer::canIsolate()) {
            $this->markTestSkipped('needs root for unshare --uts --pid (separate host names and pid spaces)');
        }
        parent::setUp();
    }

    protected function tearDown(): void
    {
        foreach ($this->servers as $s) {
            $s->stop();
        }
        $this->servers = [];
        parent::tearDown();
    }

    /** Starts a server named $name, kept as $key (two servers may share a host name). */
    protected function server(string $key, array $ini = [], ?string $name = null, ?array $config = null): SimulatedServer
    {
        return $this->servers[$key] = SimulatedServer::start($name ?? $key, $config ?? $this->config, $ini);
    }

    /** Reaps from $server until $id is released or $seconds pass; returns that reap's entry. */
    protected function reapUntilReleased(SimulatedServer $server, int $id, float $seconds): array
    {
        $deadline = microtime(true) + $seconds;
        do {
            $entry = self::byId($server->send(['cmd' => 'reap']))[$id] ?? null;
            if ($entry === null || $entry['action'] !== 'kept') {
                return $entry ?? [];
            }
            usleep(200000);
        } while (microtime(true) < $deadline);
        $this->fail("row $id was not released within $seconds s: " . json_encode($entry));
    }

    /** Reaps from $server every 250 ms for $seconds; returns each distinct outcome for $id. */
    protected function reapFor(SimulatedServer $server, int $id, float $seconds): array
    {
        $seen = [];
        $deadline = microtime(true) + $seconds;
        do {
            $entry = self::byId($server->send(['cmd' => 'reap']))[$id] ?? null;
            $seen[] = $entry === null ? 'gone' : "{$entry['verdict']}/{$entry['reason']}/{$entry['action']}";
            usleep(250000);
        } while (microtime(true) < $deadline);
        return array_values(array_unique($seen));
    }
}
