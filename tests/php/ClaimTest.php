<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use function Matomo\ArchiveClaim\claim_invalidation;

final class ClaimTest extends ExtensionTestCase
{
    public function testAClaimWritesExactlyWhatMatomosStartArchiveWrites(): void
    {
        [$ours, $matomos] = $this->queue([['idsite' => 7], ['idsite' => 7]]);

        $this->assertTrue(claim_invalidation($ours));
        // The statement Matomo's Model::startArchive() issues, through a Matomo-like PDO.
        $this->pdo->prepare("UPDATE {$this->table()} SET status = ?, processing_host = ?, process_id = ?,
            ts_started = NOW() WHERE idinvalidation = ? AND status = ?")
            ->execute([1, gethostname() ?: null, (string) getmypid(), $matomos, 0]);

        $a = $this->row($ours);
        $b = $this->row($matomos);
        $this->assertLessThanOrEqual(1, abs(strtotime($a['ts_started']) - strtotime($b['ts_started'])));
        unset($a['idinvalidation'], $b['idinvalidation'], $a['ts_started'], $b['ts_started']);
        $this->assertSame($b, $a);
        $this->assertSame(1, (int) $a['status']);
        $this->assertSame(gethostname(), $a['processing_host']);
        $this->assertSame((string) getmypid(), $a['process_id']);
    }

    public function testTsStartedIsTheDatabaseClock(): void
    {
        [$id] = $this->queue([[]]);
        $this->assertTrue(claim_invalidation($id));
        $skew = $this->pdo->query("SELECT ABS(TIMESTAMPDIFF(SECOND, ts_started, NOW())) FROM {$this->table()}")->fetchColumn();
        $this->assertLessThanOrEqual(1, (int) $skew);
    }

    public function testOnlyAQueuedRowCanBeClaimed(): void
    {
        [$queued, $taken] = $this->queue([[], []]);
        $this->claimAs($taken, 'other-host', '4242');
        $before = $this->row($taken);

        $this->assertTrue(claim_invalidation($queued));
        $this->assertFalse(claim_invalidation($queued), 'a second claim of our own row is not a new claim');
        $this->assertFalse(claim_invalidation($taken));
        $this->assertSame($before, $this->row($taken));
        $this->assertFalse(claim_invalidation(999999), 'a row that does not exist');
    }

    public function testIdsBelowOneAreRefused(): void
    {
        $checksum = $this->tableChecksum();
        foreach ([0, -1, PHP_INT_MIN] as $bad) {
            try {
                claim_invalidation($bad);
                $this->fail("$bad accepted");
            } catch (\ValueError $e) {
                $this->assertStringContainsString('idinvalidation', $e->getMessage());
            }
        }
        $this->assertSame($checksum, $this->tableChecksum());
    }

    public function testNonIntegersAreTypeErrors(): void
    {
        $this->expectException(\TypeError::class);
        claim_invalidation('12'); // strict_types: Matomo's string ids must be cast by the caller
    }

    public function testSixteenProcessesRacingForFiveThousandRowsClaimEachExactlyOnce(): void
    {
        $ids = TestDatabase::queueMany($this->pdo, self::PREFIX, 5000);
        $worker = __DIR__ . '/workers/claim-race.php';
        $procs = [];
        for ($i = 0; $i < 16; $i++) {
            // Racers hold their claims until told to exit (their stdin closes); with automatic
            // reaping on, the survivors would rightly re-queue a finished racer's rows. This test
            // is about claim atomicity.
            $cmd = TestDatabase::php(['-d', 'matomo_archive_claim.auto_reap=0', $worker,
                json_encode($this->config), (string) $ids[0], (string) end($ids)]);
            $procs[] = proc_open($cmd, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes) ?: null;
            $outputs[] = $pipes;
        }
        $winner = [];
        foreach ($procs as $i => $proc) {
            $line = fgets($outputs[$i][1]);
            $this->assertIsArray($result = json_decode((string) $line, true),
                $line === false ? (string) stream_get_contents($outputs[$i][2]) : $line);
            foreach ($result['won'] as $id) {
                $this->assertArrayNotHasKey($id, $winner, "row $id claimed twice");
                $winner[$id] = (string) $result['pid'];
            }
        }
        $this->assertCount(5000, $winner, 'every row claimed');
        // And the table agrees with what each process believes it won.
        foreach (TestDatabase::rows($this->pdo, self::PREFIX) as $id => $row) {
            $this->assertSame(1, (int) $row['status']);
            $this->assertSame($winner[$id], $row['process_id']);
            $this->assertSame(gethostname(), $row['processing_host']);
        }
        foreach ($procs as $i => $proc) {
            fclose($outputs[$i][0]);
            $err = stream_get_contents($outputs[$i][2]);
            $this->assertSame(0, proc_close($proc), $err);
        }
    }
}
