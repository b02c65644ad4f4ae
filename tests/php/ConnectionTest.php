<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use function Matomo\ArchiveClaim\claim_invalidation;
use function Matomo\ArchiveClaim\configure;
use function Matomo\ArchiveClaim\in_progress;

/** One lazy connection per process: fork-safe, reconnecting, with clear failures. */
final class ConnectionTest extends ExtensionTestCase
{
    /** Server ids of the sessions on our database other than the test's own PDO. */
    private function extensionSessions(): array
    {
        $own = (int) $this->pdo->query('SELECT CONNECTION_ID()')->fetchColumn();
        $s = TestDatabase::admin()->prepare('SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ?');
        $s->execute([$this->config['dbname'], $own]);
        return array_map('intval', $s->fetchAll(\PDO::FETCH_COLUMN));
    }

    public function testNothingConnectsBeforeTheFirstCallThatNeedsTheDatabase(): void
    {
        $this->assertSame([], $this->extensionSessions());
        in_progress();
        $this->assertCount(1, $this->extensionSessions());
        in_progress();
        $this->assertCount(1, $this->extensionSessions(), 'the connection is reused');
        $before = $this->extensionSessions();
        configure($this->config);
        in_progress();
        $this->assertSame($before, $this->extensionSessions(), 'configuring the same settings again keeps it');
    }

    public function testAForkedChildUsesItsOwnConnectionAndLeavesTheParentsAlone(): void
    {
        [$a, $b, $c] = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 3]]);
        $this->assertTrue(claim_invalidation($a));
        $parentSession = $this->extensionSessions();
        $this->assertCount(2, $parentSession, 'its own connection and its heartbeat\'s');

        $pipe = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
        $pid = pcntl_fork();
        if ($pid === 0) {
            $ok = claim_invalidation($b);
            fwrite($pipe[1], json_encode(['claimed' => $ok, 'pid' => getmypid()]));
            // A normal exit: PHP shuts the extension down, which is when a careless child would
            // close the inherited socket under its parent.
            exit(0);
        }
        fclose($pipe[1]);
        $child = json_decode(stream_get_contents($pipe[0]), true);
        pcntl_waitpid($pid, $status);
        // PDO is not fork-safe: the child's exit closed the session of the PDO it inherited.
        // That is exactly the hazard the extension avoids; the test needs a new PDO here.
        $this->pdo = TestDatabase::matomoPdo($this->config);

        $this->assertTrue($child['claimed']);
        $this->assertSame(0, (int) $this->row($b)['status'], 'the child gave its own claim back as it ended');
        $this->assertSame((string) getmypid(), $this->row($a)['process_id'], "and left the parent's alone");
        $this->assertSame($parentSession, $this->extensionSessions(), "the parent's session survived the child");
        $this->assertTrue(claim_invalidation($c));
        $this->assertSame((string) getmypid(), $this->row($c)['process_id']);
        $this->assertSame($parentSession, $this->extensionSessions(), 'and the parent did not need to reconnect');
    }

    public function testTheNextCallReconnectsAfterTheServerKillsTheSession(): void
    {
        [$a, $b] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $this->assertTrue(claim_invalidation($a));
        [$session] = $this->extensionSessions();
        TestDatabase::admin()->exec("KILL $session");

        $this->assertTrue(claim_invalidation($b));
        $this->assertNotSame([$session], $this->extensionSessions());
        $this->assertSame((string) getmypid(), $this->row($b)['process_id']);
    }

    public function testTheNextCallWorksAfterWaitTimeoutClosedAnIdleConnection(): void
    {
        $admin = TestDatabase::admin();
        $old = (int) $admin->query('SELECT @@GLOBAL.wait_timeout')->fetchColumn();
        [$a, $b] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $admin->exec('SET GLOBAL wait_timeout = 1');
        try {
            configure(['read_timeout' => 59] + $this->config); // new settings: a new session, with the 1 s wait_timeout
            $this->assertTrue(claim_invalidation($a));
            $session = $this->extensionSessions();
            usleep(2500000); // the server closes the idle session
            $this->assertNotSame($session, $this->extensionSessions());
            $this->assertTrue(claim_invalidation($b), 'reconnected by itself');
        } finally {
            $admin->exec("SET GLOBAL wait_timeout = $old");
        }
    }

    public function testTheNextCallWorksAfterTheServerRestarts(): void
    {
        $restart = getenv('MATOMO_ARCHIVE_CLAIM_TEST_DB_RESTART');
        if (!$restart) {
            $this->markTestSkipped('the test server was not started by tests/support/with-mariadb.sh, so it cannot be restarted');
        }
        [$a, $b] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $this->assertTrue(claim_invalidation($a));
        exec(escapeshellarg($restart) . ' 2>&1', $out, $code);
        $this->assertSame(0, $code, implode("\n", $out));

        $this->assertTrue(claim_invalidation($b), 'reconnected by itself');
        $this->pdo = TestDatabase::matomoPdo($this->config);
        $this->assertSame((string) getmypid(), $this->row($b)['process_id']);
    }

    public function testAnUnreachableServerIsAConnectionException(): void
    {
        $closed = stream_socket_server('tcp://127.0.0.1:0');
        $port = (int) explode(':', stream_socket_get_name($closed, false))[1];
        fclose($closed);
        configure(['port' => $port] + $this->config);
        $started = microtime(true);
        try {
            in_progress();
            $this->fail('connected to nothing');
        } catch (\Matomo\ArchiveClaim\ConnectionException $e) {
            $this->assertStringContainsString("127.0.0.1:$port", $e->getMessage());
            $this->assertSame(2002, $e->getCode());
        }
        $this->assertLessThan(5, microtime(true) - $started);
    }

    public function testWrongCredentialsAreAConnectionExceptionWithoutThePassword(): void
    {
        configure(['password' => 'definitely-wrong-pw'] + $this->config);
        try {
            in_progress();
            $this->fail('logged in with a wrong password');
        } catch (\Matomo\ArchiveClaim\ConnectionException $e) {
            $this->assertSame(1045, $e->getCode());
            $this->assertStringNotContainsString('definitely-wrong-pw', $e->getMessage());
            $this->assertStringNotContainsString($this->config['password'], $e->getMessage());
        }
    }

    public function testTheSessionIsSetUpAsMatomoSetsUpItsOwn(): void
    {
        $admin = TestDatabase::admin();
        $admin->exec("SET GLOBAL log_output = 'TABLE'");
        $admin->exec('SET GLOBAL general_log = 1');
        try {
            in_progress();
            [$session] = $this->extensionSessions();
        } finally {
            $admin->exec('SET GLOBAL general_log = 0');
        }
        $s = $admin->prepare("SELECT CONVERT(argument USING utf8mb4) FROM mysql.general_log
            WHERE thread_id = ? AND command_type = 'Query'");
        $s->execute([$session]);
        $statements = $s->fetchAll(\PDO::FETCH_COLUMN);
        // One statement sets the session up (Matomo's sql_mode, the charset, lock waits), and
        // the driver does not ask for max_allowed_packet: each archiving child pays for these.
        $setup = array_values(array_filter($statements, fn ($q) => str_starts_with($q, 'SET SESSION ')));
        $this->assertCount(1, $setup, json_encode($statements));
        $this->assertStringStartsWith("SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO', ", $setup[0]);
        $this->assertStringContainsString('NAMES utf8mb4', $setup[0]);
        $this->assertSame([], preg_grep('/max_allowed_packet/i', $statements));
    }

    public function testAClaimThatOutlastsReadTimeoutReturnsItsSettledOutcomeAndNothingCommitsLater(): void
    {
        [$id] = $this->queue([[]]);
        configure(['read_timeout' => 3] + $this->config);
        $locker = TestDatabase::matomoPdo($this->config);
        $locker->beginTransaction();
        $locker->query("SELECT * FROM {$this->table()} WHERE idinvalidation = $id FOR UPDATE")->fetchAll();
        $started = microtime(true);
        // Matomo's own transaction holds the row longer than read_timeout allows: the server
        // ends the claim's lock wait first (nothing of it commits), and the claim is lost.
        $this->assertFalse(claim_invalidation($id));
        $this->assertLessThan(15, microtime(true) - $started);
        $locker->commit();
        usleep(500000);
        $this->assertSame(0, (int) $this->row($id)['status'], 'the abandoned UPDATE did not commit after the lock went');
        $this->assertTrue(claim_invalidation($id), 'and the row can be claimed now');
    }

    public function testAListenerThatNeverGreetsFailsWithinConnectTimeout(): void
    {
        // The kernel completes the TCP handshake for a socket nobody accepts on: a silent server.
        $silent = stream_socket_server('tcp://127.0.0.1:0');
        $port = (int) explode(':', stream_socket_get_name($silent, false))[1];
        configure(['host' => '127.0.0.1', 'port' => $port, 'connect_timeout' => 2, 'read_timeout' => 60] + $this->config);
        $started = microtime(true);
        try {
            claim_invalidation(1);
            $this->fail('a silent listener was taken for a database');
        } catch (\Matomo\ArchiveClaim\ConnectionException $e) {
            $this->assertStringContainsString('did not complete the handshake within connect_timeout (2 s)', $e->getMessage());
        } finally {
            fclose($silent);
        }
        $this->assertLessThan(10, microtime(true) - $started, 'not read_timeout (60 s)');
    }
}
