<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

/**
 * A fleet upgraded halfway: archivers without the extension (Matomo's own claim, release and
 * delete statements through PDO) and archivers with it work one queue at once. One of the PDO
 * archivers is killed holding a row; the extension's heartbeat threads on the same host prove
 * it dead and re-queue its row, and the fleet finishes the queue.
 */
final class MixedFleetTest extends ExtensionTestCase
{
    private const ROWS = 200;

    public function testServersWithAndWithoutTheExtensionShareOneQueueSafely(): void
    {
        TestDatabase::queueMany($this->pdo, self::PREFIX, self::ROWS);
        $log = tempnam(sys_get_temp_dir(), 'mixed-fleet');
        $worker = __DIR__ . '/../support/archiver.php';
        $config = json_encode($this->config);
        $procs = [];
        for ($i = 0; $i < 3; $i++) {
            // Every 7th invalidation "fails" and is given back, exercising both release paths.
            $procs['pdo' . $i] = proc_open([PHP_BINARY, $worker, $config, $log, '10', 'pdo', '7'], [], $pipes);
            $procs['ext' . $i] = proc_open(TestDatabase::php(['-d', 'matomo_archive_claim.auto_reap=1',
                '-d', 'matomo_archive_claim.heartbeat_interval=1', '-d', 'matomo_archive_claim.lease=3',
                $worker, $config, $log, '10', 'ext', '7']), [], $pipes);
        }

        // Kill one PDO archiver while it holds a row: it never finishes nor releases it.
        $victim = proc_get_status($procs['pdo0'])['pid'];
        $deadline = microtime(true) + 10;
        do {
            usleep(20000);
            $held = $this->pdo->query("SELECT idinvalidation FROM {$this->table()} WHERE status = 1 AND process_id = '$victim'")->fetchColumn();
        } while ($held === false && microtime(true) < $deadline);
        $this->assertNotFalse($held, 'the PDO archiver claimed work');
        // Not waited for: it stays a zombie, as a killed archiver does until its parent collects it.
        posix_kill($victim, SIGKILL);
        $killedAt = microtime(true);

        $deadline = microtime(true) + 30;
        while ((int) $this->pdo->query("SELECT COUNT(*) FROM {$this->table()}")->fetchColumn() > 0 && microtime(true) < $deadline) {
            usleep(100000);
        }
        foreach ($procs as $proc) {
            proc_close($proc);
        }

        $this->assertLessThan($deadline, microtime(true), 'the queue was finished in time');
        $this->assertSame(0, (int) $this->pdo->query("SELECT COUNT(*) FROM {$this->table()}")->fetchColumn(), 'the queue was finished');
        $work = WorkLog::analyse($log, [gethostname() . " $victim" => $killedAt]);
        unlink($log);
        $this->assertCount(self::ROWS, $work['done'], 'every invalidation was done');
        $this->assertSame([], $work['overlaps'], 'no invalidation was worked on by two live processes at once');
        $this->assertSame([], $work['unfinished'], 'only the killed archiver left work unfinished');
        $this->assertContains((int) $held, $work['done'], "the killed archiver's row was re-queued and done by another");
    }
}
