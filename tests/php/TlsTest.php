<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PDO;
use PHPUnit\Framework\TestCase;

/**
 * Matomo's [database] ssl_* keys against a throwaway MariaDB of its own that has a certificate
 * from a CA made for the run and require_secure_transport = ON (tests/support/with-mariadb.sh
 * with MATOMO_ARCHIVE_CLAIM_TEST_DB_TLS=1). Each case runs in a child PHP process, as an
 * archiver would: configure (or php.ini), then claim, register, reap, and exit.
 */
final class TlsTest extends TestCase
{
    /** @var resource|null */
    private static $server = null;
    /** @var array<int, resource> */
    private static array $pipes = [];
    /** @var array<string, string> the server's MATOMO_ARCHIVE_CLAIM_TEST_* variables */
    private static array $env = [];

    private array $config;
    private PDO $pdo;

    public static function setUpBeforeClass(): void
    {
        foreach (['openssl', 'mariadbd', 'mariadb-install-db'] as $tool) {
            if (trim((string) shell_exec('command -v ' . escapeshellarg($tool))) === '') {
                self::markTestSkipped("needs $tool to start a MariaDB with a CA of its own (apt-get install openssl mariadb-server)");
            }
        }
        $root = dirname(__DIR__, 2);
        // The server lives while its command reads stdin: closing that pipe (here, or when this
        // process dies) stops and removes it.
        $cmd = 'exec env -u MATOMO_ARCHIVE_CLAIM_TEST_DSN MATOMO_ARCHIVE_CLAIM_TEST_DB_TLS=1 '
            . escapeshellarg("$root/tests/support/with-mariadb.sh")
            . " sh -c 'env | grep ^MATOMO_ARCHIVE_CLAIM_TEST_; echo ready; exec cat >/dev/null'";
        self::$server = proc_open($cmd, [0 => ['pipe', 'r'], 1 => ['pipe', 'w']], self::$pipes);
        $seen = '';
        while (($line = fgets(self::$pipes[1])) !== false && trim($line) !== 'ready') {
            $seen .= $line;
            if (preg_match('/^(MATOMO_ARCHIVE_CLAIM_TEST_\w+)=(.*)$/', trim($line), $m)) {
                self::$env[$m[1]] = $m[2];
            }
        }
        if (!isset(self::$env['MATOMO_ARCHIVE_CLAIM_TEST_TLS_DIR'], self::$env['MATOMO_ARCHIVE_CLAIM_TEST_SOCKET'])) {
            self::tearDownAfterClass();
            self::fail("the TLS server did not start:\n$seen");
        }
        // An account that must show a certificate signed by the server's CA.
        self::root()->exec("CREATE USER 'archiver'@'%' IDENTIFIED BY 'archiver-pw' REQUIRE X509;
            GRANT ALL PRIVILEGES ON *.* TO 'archiver'@'%'");
    }

    public static function tearDownAfterClass(): void
    {
        foreach (self::$pipes as $pipe) {
            fclose($pipe);
        }
        self::$pipes = [];
        if (self::$server !== null) {
            proc_close(self::$server);
            self::$server = null;
        }
    }

    /** Over the socket: local, so require_secure_transport lets it in without TLS. */
    private static function root(?string $dbname = null): PDO
    {
        $dsn = 'mysql:unix_socket=' . self::$env['MATOMO_ARCHIVE_CLAIM_TEST_SOCKET'] . ($dbname ? ";dbname=$dbname" : '');
        return new PDO($dsn, 'root', '', [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
    }

    private static function file(string $name): string
    {
        return self::$env['MATOMO_ARCHIVE_CLAIM_TEST_TLS_DIR'] . "/$name";
    }

    protected function setUp(): void
    {
        $dbname = 'mac_tls_' . bin2hex(random_bytes(4));
        self::root()->exec("CREATE DATABASE `$dbname`");
        $this->pdo = self::root($dbname);
        $this->pdo->exec(sprintf(TestDatabase::INVALIDATIONS_DDL, 'matomo_'));
        $dsn = parse_url(self::$env['MATOMO_ARCHIVE_CLAIM_TEST_DSN']);
        // Matomo's [database] section as its production global.ini.php leaves it.
        $this->config = [
            'host' => '127.0.0.1', 'port' => (string) $dsn['port'], 'username' => rawurldecode($dsn['user']),
            'password' => rawurldecode($dsn['pass']), 'dbname' => $dbname, 'tables_prefix' => 'matomo_',
            'adapter' => 'PDO\\MYSQL', 'charset' => 'utf8mb4', 'enable_ssl' => '0', 'ssl_ca' => '',
            'ssl_cert' => '', 'ssl_key' => '', 'ssl_ca_path' => '', 'ssl_cipher' => '', 'ssl_no_verify' => '',
        ];
    }

    protected function tearDown(): void
    {
        self::root()->exec("DROP DATABASE IF EXISTS `{$this->config['dbname']}`");
    }

    private function queued(int $idsite = 1): int
    {
        return TestDatabase::queue($this->pdo, 'matomo_', [['idsite' => $idsite]])[0];
    }

    private function status(int $id): int
    {
        return (int) $this->pdo->query("SELECT status FROM matomo_archive_invalidations WHERE idinvalidation = $id")->fetchColumn();
    }

    /**
     * Runs `$code` in a child PHP after configure($database) (null: only php.ini); returns what
     * the code returns, or ['exception' => class, 'code' => ..., 'message' => ...].
     */
    private function child(?array $database, string $code, array $ini = []): array
    {
        $script = '$database = json_decode($argv[1], true);'
            . 'try { if ($database !== null) { Matomo\ArchiveClaim\configure($database); }'
            . '  $result = (function () { ' . $code . ' })();'
            . '} catch (Throwable $e) { $result = ["exception" => get_class($e), "code" => $e->getCode(), "message" => $e->getMessage()]; }'
            . 'echo "\n", json_encode($result);';
        $args = ['-d', 'matomo_archive_claim.auto_reap=0'];
        foreach ($ini as $k => $v) {
            $args[] = '-d';
            $args[] = "$k=\"$v\"";
        }
        $proc = proc_open(TestDatabase::php([...$args, '-r', $script, '--', json_encode($database)]),
            [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        $this->assertSame(0, proc_close($proc), $out . $err);
        $lines = explode("\n", trim($out));
        $result = json_decode(end($lines), true);
        $this->assertIsArray($result, $out . $err);
        return $result;
    }

    private function verified(array $more = []): array
    {
        return ['enable_ssl' => '1', 'ssl_ca' => self::file('ca.pem')] + $more + $this->config;
    }

    public function testAPlainConnectionIsRefusedByTheServerAndTheErrorSaysWhatToSet(): void
    {
        $id = $this->queued();
        $r = $this->child($this->config, 'return [Matomo\ArchiveClaim\claim_invalidation(' . $id . ')];');
        $this->assertSame(\Matomo\ArchiveClaim\ConnectionException::class, $r['exception'] ?? null, json_encode($r));
        $this->assertSame(1045, $r['code'], 'MariaDB answers a plain connection under require_secure_transport with access denied');
        $this->assertStringContainsString('require_secure_transport = ON', $r['message']);
        $this->assertStringContainsString('enable_ssl = 1', $r['message']);
        $this->assertSame(0, $this->status($id));
    }

    public function testVerifiedTlsCarriesClaimsTheHeartbeatReapingAndTheReleaseAtRequestEnd(): void
    {
        [$mine, $orphan] = [$this->queued(1), $this->queued(2)];
        $gone = (int) shell_exec(escapeshellarg(PHP_BINARY) . ' -n -r "echo getmypid();"');
        $this->assertFalse(file_exists("/proc/$gone"));
        $this->pdo->prepare("UPDATE matomo_archive_invalidations SET status = 1, processing_host = ?, process_id = ?,
            ts_started = NOW() WHERE idinvalidation = ?")->execute([gethostname(), (string) $gone, $orphan]);

        $r = $this->child($this->verified(), '
            $claimed = Matomo\ArchiveClaim\claim_invalidation(' . $mine . ');
            $registration = Matomo\ArchiveClaim\register_process();
            $report = Matomo\ArchiveClaim\reap_orphans();
            return ["claimed" => $claimed, "heartbeat_error" => $registration["last_error"],
                "actions" => array_column($report["rows"], "action", "idinvalidation")];');
        $this->assertTrue($r['claimed'] ?? null, json_encode($r));
        // register_process() opens the heartbeat thread's own connection before it returns.
        $this->assertNull($r['heartbeat_error']);
        $this->assertSame([$mine => 'kept', $orphan => 'reset'], $r['actions'], 'the dead owner\'s row, and not ours');
        $this->assertSame(0, $this->status($orphan));
        $this->assertSame(0, $this->status($mine), 'released when the request ended without finishing it');
    }

    public function testAClientCertificateOpensAnAccountCreatedRequireX509(): void
    {
        $id = $this->queued();
        $account = ['username' => 'archiver', 'password' => 'archiver-pw'];
        $claim = 'return ["claimed" => Matomo\ArchiveClaim\claim_invalidation(' . $id . ')];';

        $without = $this->child($this->verified($account), $claim);
        $this->assertSame(\Matomo\ArchiveClaim\ConnectionException::class, $without['exception'] ?? null, json_encode($without));
        $this->assertStringContainsString('ssl_cert and ssl_key', $without['message']);

        // The key in PKCS#1 form ("BEGIN RSA PRIVATE KEY"), as older tools write it.
        $with = $this->child($this->verified($account + ['ssl_cert' => self::file('client.pem'), 'ssl_key' => self::file('client-key.pem')]), $claim);
        $this->assertSame(['claimed' => true], $with);
    }

    public function testAServerCertificateNotSignedBySslCaIsRefusedWithoutTouchingTheQueue(): void
    {
        $id = $this->queued();
        $claim = 'return ["claimed" => Matomo\ArchiveClaim\claim_invalidation(' . $id . ')];';
        foreach ([
            'another CA' => [['ssl_ca' => self::file('other-ca.pem')], 'not signed by the CA in ssl_ca'],
            'no ssl_ca: public CAs only' => [['ssl_ca' => ''], 'not signed by a public CA (ssl_ca is empty)'],
        ] as $case => [$keys, $says]) {
            $r = $this->child(['enable_ssl' => '1'] + $keys + $this->config, $claim);
            $this->assertSame(\Matomo\ArchiveClaim\ConnectionException::class, $r['exception'] ?? null, "$case: " . json_encode($r));
            $this->assertSame(2026, $r['code'], $case);
            $this->assertStringContainsString($says, $r['message'], $case);
        }
        $this->assertSame(0, $this->status($id));
    }

    public function testSslNoVerifyEncryptsButAcceptsAnyCertificate(): void
    {
        $id = $this->queued();
        $r = $this->child(['enable_ssl' => '1', 'ssl_ca' => self::file('other-ca.pem'), 'ssl_no_verify' => '1'] + $this->config,
            'return ["claimed" => Matomo\ArchiveClaim\claim_invalidation(' . $id . '), "complete" => Matomo\ArchiveClaim\complete_invalidations([' . $id . '])];');
        $this->assertSame(['claimed' => true, 'complete' => 1], $r);
    }

    public function testThePhpIniUrlTakesTheSameKeys(): void
    {
        $id = $this->queued();
        $c = $this->config;
        $url = sprintf('mysql://archiver:archiver-pw@127.0.0.1:%s/%s?tables_prefix=matomo_&enable_ssl=1&ssl_ca=%s&ssl_cert=%s&ssl_key=%s',
            $c['port'], $c['dbname'], rawurlencode(self::file('ca.pem')), rawurlencode(self::file('client.pem')),
            rawurlencode(self::file('client-key.pem')));
        $r = $this->child(null, 'return ["claimed" => Matomo\ArchiveClaim\claim_invalidation(' . $id . '), "complete" => Matomo\ArchiveClaim\complete_invalidations([' . $id . '])];',
            ['matomo_archive_claim.database' => $url]);
        $this->assertSame(['claimed' => true, 'complete' => 1], $r);
    }
}
