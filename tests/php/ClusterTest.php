<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

/**
 * Claims and reaps on a 3-node MariaDB Galera cluster, archivers and reapers on different
 * nodes (design §9): concurrent claims of one row on two nodes end in a certification
 * conflict (1213) for one of them; each node's NOW()/UTC_TIMESTAMP() is its own clock; a node
 * may lag in applying what the others committed; a node cut off answers 1047. Heartbeat 1 s,
 * lease 4 s throughout. No assertion on time except generous upper bounds on a release;
 * every "never released" is checked over a window of several leases.
 */
final class ClusterTest extends ClusterTestCase
{
    private const BEAT = 1;
    private const LEASE = 4;
    private const ARCHIVER = ['heartbeat_interval' => self::BEAT, 'lease' => self::LEASE, 'auto_reap' => 0];
    private const REAPER = ['heartbeat_interval' => self::BEAT, 'lease' => self::LEASE, 'auto_reap' => 1];

    protected function setUp(): void
    {
        parent::setUp();
        // Only the clock tests skew node 3 (each sets its own offset); the others run on true
        // clocks, so what they show is not a clock's doing.
        if (!str_contains($this->getName(), 'Clock')) {
            static::$cluster->setClock(3, null);
        }
    }

    public function testProcessesOnThreeNodesRacingForTheSameRowsClaimEachExactlyOnceAndNothingThrows(): void
    {
        $ids = $this->queue(400);
        $racers = [];
        foreach ([1, 2, 3] as $node) {
            $racers[$node] = $this->server("racer$node", $node, self::ARCHIVER);
            $racers[$node]->send(['cmd' => 'register']); // registration is not part of the race
        }
        // All three walk the same ids in the same order at the same time: on Galera the loser
        // of a row is told by certification at commit (1213), not by the row it read.
        foreach ($racers as $r) {
            $r->request(['cmd' => 'claim_all', 'ids' => $ids]);
        }
        $won = $errors = [];
        foreach ($racers as $node => $r) {
            $answer = $r->answer(180);
            $this->assertNotNull($answer, "racer$node did not finish within 180 s");
            $this->assertArrayNotHasKey('error', $answer);
            $won[$node] = $answer['won'];
            foreach ($answer['errors'] as $id => $message) {
                $errors[] = "racer$node, row $id: $message";
            }
        }
        $this->assertSame([], array_slice($errors, 0, 5), sprintf('%d claims threw (first 5 shown); a lost race is false, not an exception', count($errors)));

        $all = array_merge(...array_values($won));
        sort($all);
        $this->assertSame(count($all), count(array_unique($all)), 'no row was won by two processes');
        $this->assertSame($ids, $all, 'every row was won by exactly one process');
        $rows = $this->rows(2);
        foreach ($won as $node => $mine) {
            foreach ($mine as $id) {
                $this->assertSame(["racer$node", 1], [$rows[$id]['processing_host'], (int) $rows[$id]['status']], "row $id");
            }
        }
        fwrite(STDERR, sprintf("\ncluster race: %s rows won per node\n", json_encode(array_map('count', $won))));
    }

    public function testANodeClockAheadReleasesNoLiveClaimAndADeadServersClaimStillComesBack(): void
    {
        $this->skewedClockScenario('+90s');
    }

    public function testANodeClockBehindReleasesNoLiveClaimAndADeadServersClaimStillComesBack(): void
    {
        $this->skewedClockScenario('-90s');
    }

    /**
     * Node 3's clock is $offset off. One archiver writes through node 1, one through node 3
     * (its heartbeats carry node 3's clock if they carry any); reapers on every node, long-lived
     * (their own heartbeat thread reaps, and they are asked to reap) and fresh reap_orphans()
     * processes. For 3 leases no live claim may go. Then both archivers' servers lose power:
     * each claim must come back within 3 leases and some slack.
     */
    private function skewedClockScenario(string $offset): void
    {
        $c = static::$cluster;
        $c->setClock(3, $offset);
        $skew = (int) $c->pdo(3)->query('SELECT UNIX_TIMESTAMP()')->fetchColumn() - (int) $c->pdo(1)->query('SELECT UNIX_TIMESTAMP()')->fetchColumn();
        $this->assertEqualsWithDelta((int) $offset, $skew, 5, "node 3's clock runs $offset");

        [$viaNode1, $viaNode3] = $this->queue(2);
        $this->assertSame([$viaNode1], $this->server('arch1', 1, self::ARCHIVER)->send(['cmd' => 'claim', 'ids' => [$viaNode1]])['won']);
        $this->assertSame([$viaNode3], $this->server('arch3', 3, self::ARCHIVER)->send(['cmd' => 'claim', 'ids' => [$viaNode3]])['won']);
        $live = [$viaNode1 => 'arch1', $viaNode3 => 'arch3'];
        $reapers = [];
        foreach ([1, 2, 3] as $node) {
            $reapers[$node] = $this->server("reaper$node", $node, self::REAPER);
            $reapers[$node]->send(['cmd' => 'register']);
        }

        $this->assertNoLiveClaimReleasedFor(3 * self::LEASE, $live, $reapers, [1, 2, 3]);

        $this->powerOff('arch1');
        $this->powerOff('arch3');
        $killed = microtime(true);
        $bound = 3 * self::LEASE + 10;
        $pending = $live;
        while ($pending && microtime(true) - $killed < $bound) {
            foreach ($reapers as $r) {
                $r->send(['cmd' => 'reap']);
            }
            $rows = $this->rows(1);
            foreach (array_keys($pending) as $id) {
                if ((int) $rows[$id]['status'] === 0) {
                    unset($pending[$id]);
                }
            }
            usleep(500000);
        }
        fwrite(STDERR, sprintf("\ncluster, node 3 at %s (lease %d s): no live claim released over %d s; the powered-off servers' claims back %s after the power loss\n",
            $offset, self::LEASE, 3 * self::LEASE, $pending ? 'not within ' . $bound . ' s' : sprintf('%.1f s', microtime(true) - $killed)));
        $this->assertSame([], $pending, sprintf('the claims of the powered-off servers (%s) were not released within %d s (3 leases + 10 s) with node 3 at %s; reapers say: %s',
            implode(', ', $pending), $bound, $offset, json_encode($this->verdicts($reapers, array_keys($pending)))));
    }

    public function testAReaperOnANodeThatLagsBehindReleasesNoLiveClaim(): void
    {
        $c = static::$cluster;
        [$id] = $this->queue(1);
        $this->assertSame([$id], $this->server('arch', 1, self::ARCHIVER)->send(['cmd' => 'claim', 'ids' => [$id]])['won']);
        $reaper = $this->server('reaper2', 2, self::REAPER);
        $reaper->send(['cmd' => 'register']);
        sleep(self::BEAT + 1); // the reaper has seen the archiver's heartbeat move

        // Node 2 still answers reads but applies nothing: the archiver's heartbeats through
        // node 1 stop arriving there. Reaps on node 2 may block (a causal read waits; a write
        // waits for the read lock), so none is waited for during the hold.
        $c->holdApplier(2);
        $fresh = [];
        $agentPending = false;
        $agentAnswers = [];
        $lost = [];
        $end = microtime(true) + 4 * self::LEASE;
        while (microtime(true) < $end && !$lost) {
            $fresh[] = $this->startFreshReap(2);
            if (!$agentPending) {
                $reaper->request(['cmd' => 'reap']);
                $agentPending = true;
            }
            if (($a = $reaper->answer(0.1)) !== null) {
                $agentAnswers[] = $a;
                $agentPending = false;
            }
            $lost = $this->lostClaims([$id => 'arch']);
            sleep(2);
        }
        $c->releaseApplier(2);
        // A release decided during the hold lands now, if at all.
        $reports = [];
        foreach ($fresh as $i => $handle) {
            $reports["fresh reap $i"] = $this->freshReapResult($handle, 30) ?? ['error' => 'still running 30 s after the hold ended'];
        }
        if ($agentPending) {
            $agentAnswers[] = $reaper->answer(30) ?? ['error' => 'no answer 30 s after the hold ended'];
        }
        foreach ($agentAnswers as $i => $a) {
            $reports["reaper2 reap $i"] = $a;
        }
        $reports['reaper2 heartbeat thread'] = ['rows' => $reaper->send(['cmd' => 'background_releases'])['rows']];
        sleep(2);
        $lost = array_merge($lost, $this->lostClaims([$id => 'arch']));
        $released = [];
        foreach ($reports as $who => $report) {
            $released = array_merge($released, array_values(array_intersect_key(self::released($report, $who), [$id => true])));
        }
        $this->assertSame([], $lost, 'the live claim was released by a reaper on the lagging node: ' . json_encode($released));
        $this->assertSame([], $released);
    }

    public function testReapersOnEveryNodeAtOnceReleaseEachRowOfADeadServerExactlyOnce(): void
    {
        $ids = $this->queue(25);
        $deadRows = array_slice($ids, 0, 20);
        $liveRows = array_slice($ids, 20);
        $reapers = [];
        foreach ([1, 2, 3] as $node) {
            $reapers[$node] = $this->server("reaper$node", $node, self::REAPER);
            $reapers[$node]->send(['cmd' => 'register']);
        }
        $this->assertSame($deadRows, $this->server('doomed', 1, self::ARCHIVER)->send(['cmd' => 'claim', 'ids' => $deadRows])['won']);
        $this->assertSame($liveRows, $this->server('alive', 2, self::ARCHIVER)->send(['cmd' => 'claim', 'ids' => $liveRows])['won']);
        sleep(self::BEAT + 1);
        $this->powerOff('doomed');
        $killed = microtime(true);

        $releases = []; // id => list of who released it
        $errors = [];
        $record = function (?array $report, string $who) use (&$releases, &$errors): void {
            if ($report === null || isset($report['error'])) {
                $errors[] = "$who: " . ($report['error'] ?? 'no answer');
                return;
            }
            foreach (self::released($report, $who) as $id => $what) {
                $releases[$id][] = $what;
            }
        };
        $bound = 3 * self::LEASE + 10;
        do {
            // Every node's long-lived reaper and a fresh one on every node, all at once.
            $fresh = [];
            foreach ($reapers as $node => $r) {
                $r->request(['cmd' => 'reap']);
                $fresh[$node] = $this->startFreshReap($node);
            }
            foreach ($reapers as $node => $r) {
                $record($r->answer(60), "reaper$node");
                $record($this->freshReapResult($fresh[$node], 60), "fresh reap on node $node");
            }
            $rows = $this->rows(1);
            $left = array_filter($deadRows, fn ($id) => (int) $rows[$id]['status'] === 1);
            usleep(300000);
        } while ($left && microtime(true) - $killed < $bound);
        foreach ($reapers as $node => $r) {
            $record(['rows' => $r->send(['cmd' => 'background_releases'])['rows']], "reaper$node heartbeat thread");
        }

        $this->assertSame([], array_slice($errors, 0, 5), sprintf('%d reaps failed (first 5 shown); a release that lost to another node is lost_race, not an exception', count($errors)));
        $this->assertSame([], array_values($left), "the dead server's rows were not all released within $bound s");
        $twice = array_filter($releases, fn ($who) => count($who) > 1);
        $this->assertSame([], $twice, 'rows released more than once');
        $this->assertSame($deadRows, array_values(array_intersect($deadRows, array_keys($releases))), 'each dead row released once');
        $this->assertSame([], array_intersect_key($releases, array_flip($liveRows)), 'no live claim released');
        $this->assertSame([], $this->lostClaims(array_fill_keys($liveRows, 'alive')));
    }

    public function testClaimsGoOnThroughTheSurvivorsWhenANodeIsKilledOrCutOffAndNoLiveClaimGoes(): void
    {
        $c = static::$cluster;
        $queue = $this->queue(60);
        $take = function (SimulatedServer $s) use (&$queue): array {
            $id = array_shift($queue);
            $answer = $s->send(['cmd' => 'claim_all', 'ids' => [$id]]);
            $this->assertSame([], (array) $answer['errors'], "{$s->name} claims row $id through a node of the primary component");
            $this->assertSame([$id], $answer['won'], "{$s->name} claims row $id");
            return [$id => $s->name];
        };
        $archivers = [];
        $live = [];
        foreach ([1, 2, 3] as $node) {
            $archivers[$node] = $this->server("arch$node", $node, self::ARCHIVER);
            $live += $take($archivers[$node]);
            $this->server("reaper$node", $node, self::REAPER)->send(['cmd' => 'register']);
        }

        // Node 3 crashes, its clients with it (an archiver whose database is gone cannot
        // beat: by design its claims may go after a lease, so only the survivors' are checked).
        $c->kill(3);
        $this->powerOff('arch3');
        $this->powerOff('reaper3');
        $live = array_filter($live, fn ($host) => $host !== 'arch3');
        $live = $this->claimAndWatch($live, [1 => $archivers[1], 2 => $archivers[2]], $take, 2 * self::LEASE);
        $c->restart(3);

        // Node 2 is cut off from the others (1047 there); archivers on nodes 1 and 3 go on.
        $archivers[3] = $this->server('arch3b', 3, self::ARCHIVER);
        $live += $take($archivers[3]);
        $c->isolate(2);
        try {
            $archivers[2]->send(['cmd' => 'claim', 'ids' => [array_shift($queue)]]);
            $this->fail('a claim through a node cut off from the cluster succeeded');
        } catch (\RuntimeException $e) {
            $this->assertStringContainsString('1047', $e->getMessage(), 'the cut-off node answers 1047');
        }
        $live = array_filter($live, fn ($host) => $host !== 'arch2');
        $live = $this->claimAndWatch($live, [1 => $archivers[1], 3 => $archivers[3]], $take, 2 * self::LEASE);
        $c->rejoin(2);
        $this->assertSame([], $this->lostClaims($live));
    }

    /**
     * For $seconds: each archiver claims one more row every couple of seconds, fresh reaps run
     * through the same nodes, and every claim in $live must stay. Returns $live with the new
     * claims.
     *
     * @param array<int, SimulatedServer> $archivers node => archiver
     */
    private function claimAndWatch(array $live, array $archivers, callable $take, int $seconds): array
    {
        $end = microtime(true) + $seconds;
        $released = [];
        while (microtime(true) < $end) {
            foreach ($archivers as $node => $a) {
                $live += $take($a);
                $released += array_intersect_key(self::released($this->freshReap($node), "fresh reap on node $node"), $live);
            }
            $lost = $this->lostClaims($live);
            $this->assertSame([], $lost, 'a live claim of an archiver on a working node was released: ' . json_encode($released));
            sleep(1);
        }
        return $live;
    }

    /**
     * Watches $live for $seconds while every reaper reaps and fresh reaps run on $nodes; fails
     * at the first live claim released, naming who released it.
     *
     * @param array<int, string> $live id => host
     * @param array<int, SimulatedServer> $reapers
     */
    private function assertNoLiveClaimReleasedFor(int $seconds, array $live, array $reapers, array $nodes): void
    {
        $end = microtime(true) + $seconds;
        $released = [];
        while (microtime(true) < $end) {
            $fresh = [];
            foreach ($nodes as $node) {
                $fresh[$node] = $this->startFreshReap($node);
                $reapers[$node]->request(['cmd' => 'reap']);
            }
            foreach ($nodes as $node) {
                $released += array_intersect_key(self::released($this->freshReapResult($fresh[$node], 60) ?? [], "fresh reap on node $node"), $live);
                $released += array_intersect_key(self::released($reapers[$node]->answer(60) ?? [], "reaper$node"), $live);
            }
            foreach ($reapers as $node => $r) {
                $released += array_intersect_key(self::released(['rows' => $r->send(['cmd' => 'background_releases'])['rows']], "reaper$node heartbeat thread"), $live);
            }
            $lost = $this->lostClaims($live);
            if ($lost) {
                $this->fail(sprintf("a live claim was released (node 3's clock %s):\n%s\nreleased by: %s", static::$cluster->clock(3),
                    implode("\n", $lost), json_encode($released)));
            }
            sleep(1);
        }
    }

    /** What each reaper now says of the rows $ids (dry run). */
    private function verdicts(array $reapers, array $ids): array
    {
        $out = [];
        foreach ($reapers as $node => $r) {
            foreach ($r->send(['cmd' => 'reap', 'options' => ['dry_run' => true]])['rows'] as $row) {
                if (in_array((int) $row['idinvalidation'], $ids, true)) {
                    $out["reaper$node"][$row['idinvalidation']] = "{$row['verdict']}/{$row['reason']}";
                }
            }
        }
        return $out;
    }
}
