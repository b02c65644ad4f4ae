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
        [self::$server, self::$pipes, self::$env] = self::startServer([]);
        // An account that must show a certificate signed by the server's CA.
        self::root()->exec("CREATE USER 'archiver'@'%' IDENTIFIED BY 'archiver-pw' REQUIRE X509;
            GRANT ALL PRIVILEGES ON *.* TO 'archiver'@'%'");
    }

    /**
     * A throwaway MariaDB with a CA of its own; it lives while its command reads stdin: closing
     * that pipe (here, or when this process dies) stops and removes it.
     *
     * @return array{0: resource, 1: array<int, resource>, 2: array<string, string>}
     */
    private static function startServer(array $env): array
    {
        $root = dirname(__DIR__, 2);
        $vars = '';
        foreach ($env + ['MATOMO_ARCHIVE_CLAIM_TEST_DB_TLS' => '1'] as $k => $v) {
            $vars .= ' ' . escapeshellarg("$k=$v");
        }
        $cmd = 'exec env -u MATOMO_ARCHIVE_CLAIM_TEST_DSN' . $vars . ' '
            . escapeshellarg("$root/tests/support/with-mariadb.sh")
            . " sh -c 'env | grep ^MATOMO_ARCHIVE_CLAIM_TEST_; echo ready; exec cat >/dev/null'";
        $server = proc_open($cmd, [0 => ['pipe', 'r'], 1 => ['pipe', 'w']], $pipes);
        $seen = '';
        $found = [];
        while (($line = fgets($pipes[1])) !== false && trim($line) !== 'ready') {
            $seen .= $line;
            if (preg_match('/^(MATOMO_ARCHIVE_CLAIM_TEST_\w+)=(.*)$/', trim($line), $m)) {
                $found[$m[1]] = $m[2];
            }
        }
        if (!isset($found['MATOMO_ARCHIVE_CLAIM_TEST_TLS_DIR'], $found['MATOMO_ARCHIVE_CLAIM_TEST_SOCKET'])) {
            self::stopServer($server, $pipes);
            self::fail("the TLS server did not start:\n$seen");
        }
        return [$server, $pipes, $found];
    }

    /** @param resource|null $server */
    private static function stopServer($server, array $pipes): void
    {
        foreach ($pipes as $pipe) {
            fclose($pipe);
        }
        if ($server !== null) {
            proc_close($server);
        }
    }

    public static function tearDownAfterClass(): void
    {
        if (isset(self::$made['dir'])) {
            exec('rm -rf ' . escapeshellarg(self::$made['dir']));
            self::$made = [];
        }
        self::stopServer(self::$server, self::$pipes);
        self::$pipes = [];
        self::$server = null;
    }

    /** Over the socket: local, so require_secure_transport lets it in without TLS. */
    private static function root(?string $dbname = null, ?array $env = null): PDO
    {
        $dsn = 'mysql:unix_socket=' . ($env ?? self::$env)['MATOMO_ARCHIVE_CLAIM_TEST_SOCKET'] . ($dbname ? ";dbname=$dbname" : '');
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
            'no ssl_ca: the system\'s CAs only' => [['ssl_ca' => ''], 'not signed by a CA of this system\'s OpenSSL store'],
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

    /** @var array<string, string> certificates made the way MySQL's manual shows, per run */
    private static array $made = [];

    private static function openssl(string $args): void
    {
        exec("openssl $args 2>&1", $out, $rc);
        self::assertSame(0, $rc, "openssl $args:\n" . implode("\n", $out));
    }

    /**
     * A CA (version 3, as `openssl req -x509` makes it) and a version 1 CA, server and client
     * certificates of both versions (version 1: `openssl x509 -req` without extensions, as in
     * MySQL's manual), and CA directories hashed by `openssl rehash`.
     */
    private static function made(): array
    {
        if (self::$made !== []) {
            return self::$made;
        }
        $d = sys_get_temp_dir() . '/archive-claim-tls-' . bin2hex(random_bytes(4));
        mkdir($d, 0700);
        $q = fn (string $name) => escapeshellarg("$d/$name");
        $key = fn (string $name) => self::openssl('genrsa -out ' . $q("$name-key.pem") . ' 2048');
        $csr = fn (string $name, string $cn) => self::openssl('req -new -key ' . $q("$name-key.pem") . ' -out ' . $q("$name.csr") . ' -subj ' . escapeshellarg("/CN=$cn"));
        // Version 1: signed from a request with no extensions file.
        $v1 = function (string $name, string $cn, string $ca) use ($q, $key, $csr) {
            $key($name);
            $csr($name, $cn);
            self::openssl('x509 -req -days 2 -in ' . $q("$name.csr") . ' -CA ' . $q("$ca.pem") . ' -CAkey ' . $q("$ca-key.pem") . ' -set_serial ' . random_int(2, 1 << 30) . ' -out ' . $q("$name.pem"));
        };
        $v3 = function (string $name, string $cn, string $ca, string $ext) use ($q, $key) {
            $key($name);
            self::openssl('req -x509 -days 2 -key ' . $q("$name-key.pem") . ' -CA ' . $q("$ca.pem") . ' -CAkey ' . $q("$ca-key.pem") . ' -subj ' . escapeshellarg("/CN=$cn") . " $ext -out " . $q("$name.pem"));
        };
        // The manual's CA: `openssl req -new -x509 -key ca-key.pem` (version 3).
        $key('ca');
        self::openssl('req -new -x509 -days 2 -key ' . $q('ca-key.pem') . ' -subj "/CN=manual CA" -out ' . $q('ca.pem'));
        // A version 1 CA: self-signed from a request, no extensions.
        $key('v1ca');
        $csr('v1ca', 'version 1 CA');
        self::openssl('x509 -req -days 2 -in ' . $q('v1ca.csr') . ' -signkey ' . $q('v1ca-key.pem') . ' -out ' . $q('v1ca.pem'));
        $v1('server-v1', '127.0.0.1', 'ca');
        $v1('server-v1-by-v1ca', '127.0.0.1', 'v1ca');
        $v1('server-v1-other-name', 'db.example', 'ca');
        $v3('server-v3', 'db.example', 'ca', '-addext subjectAltName=IP:127.0.0.1,DNS:db.example');
        // PHP (8.2.36 here) judges a certificate with a subjectAltName by it alone: its common
        // name 127.0.0.1 does not count.
        $v3('server-v3-cn-only', '127.0.0.1', 'ca', '-addext subjectAltName=DNS:db.example');
        $v3('server-v3-other-name', 'db.example', 'ca', '-addext subjectAltName=DNS:db.example');
        $v1('client-v1', 'archiver v1', 'ca');
        $v3('client-v3', 'archiver v3', 'ca', '-addext basicConstraints=critical,CA:FALSE');
        $v1('client-by-v1ca', 'archiver v1ca', 'v1ca');
        // The CA the server does not trust (with-mariadb.sh made it and signed nothing with it).
        copy(self::file('other-ca.pem'), "$d/other.pem");
        copy(self::file('other-ca-key.pem'), "$d/other-key.pem");
        $v1('client-by-other', 'archiver other', 'other');
        file_put_contents("$d/bundle.pem", file_get_contents("$d/ca.pem") . file_get_contents("$d/v1ca.pem"));
        foreach (['cadir' => ['ca', 'v1ca'], 'otherdir' => []] as $dir => $cas) {
            mkdir("$d/$dir");
            foreach ($cas as $ca) {
                copy("$d/$ca.pem", "$d/$dir/$ca.pem");
            }
            copy(self::file('other-ca.pem'), "$d/$dir/other-ca.pem");
            self::openssl('rehash ' . $q($dir));
        }
        foreach (['server-v1', 'client-v1', 'v1ca', 'server-v3', 'client-v3'] as $name) {
            exec('openssl x509 -noout -text -in ' . $q("$name.pem"), $text);
            $version = str_contains(implode("\n", $text), 'Version: 1 (0x0)') ? 1 : 3;
            self::assertSame($name === 'server-v3' || $name === 'client-v3' ? 3 : 1, $version, "$name is a version $version certificate");
            $text = [];
        }
        return self::$made = ['dir' => $d];
    }

    private static function path(string $name): string
    {
        return self::made()['dir'] . "/$name";
    }

    /** Makes the server present `$server` and trust client certificates from every CA here. */
    private static function serve(string $server): void
    {
        $tls = self::$env['MATOMO_ARCHIVE_CLAIM_TEST_TLS_DIR'];
        foreach (['ca.pem', 'server.pem', 'server-key.pem'] as $f) {
            if (!file_exists("$tls/$f.orig")) {
                copy("$tls/$f", "$tls/$f.orig");
            }
        }
        file_put_contents("$tls/ca.pem", file_get_contents("$tls/ca.pem.orig") . file_get_contents(self::path('bundle.pem')));
        copy(self::path("$server.pem"), "$tls/server.pem");
        copy(self::path("$server-key.pem"), "$tls/server-key.pem");
        self::root()->exec('FLUSH SSL');
    }

    private static function serveOriginal(): void
    {
        $tls = self::$env['MATOMO_ARCHIVE_CLAIM_TEST_TLS_DIR'];
        foreach (['ca.pem', 'server.pem', 'server-key.pem'] as $f) {
            if (file_exists("$tls/$f.orig")) {
                rename("$tls/$f.orig", "$tls/$f");
            }
        }
        self::root()->exec('FLUSH SSL');
    }

    /** PDO with Matomo's keys, as core/Db/Adapter/Pdo/Mysql.php passes them: the reference. */
    private function pdoAccepts(array $db): bool|string
    {
        $options = [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 5];
        $map = ['ssl_key' => PDO::MYSQL_ATTR_SSL_KEY, 'ssl_cert' => PDO::MYSQL_ATTR_SSL_CERT, 'ssl_ca' => PDO::MYSQL_ATTR_SSL_CA,
            'ssl_ca_path' => PDO::MYSQL_ATTR_SSL_CAPATH, 'ssl_cipher' => PDO::MYSQL_ATTR_SSL_CIPHER];
        foreach ($map as $key => $attr) {
            if (!empty($db[$key])) {
                $options[$attr] = $db[$key];
            }
        }
        if (!empty($db['ssl_no_verify'])) {
            $options[PDO::MYSQL_ATTR_SSL_VERIFY_SERVER_CERT] = false;
        }
        error_clear_last();
        try {
            // mysqlnd says why TLS failed only in a warning.
            $pdo = @new PDO("mysql:host={$db['host']};port={$db['port']};dbname={$db['dbname']}", $db['username'], $db['password'], $options);
            $cipher = $pdo->query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")->fetch(PDO::FETCH_NUM)[1] ?? '';
            return $cipher !== '' ? true : 'connected without TLS';
        } catch (\PDOException $e) {
            return $e->getMessage() . (error_get_last() ? ' (' . error_get_last()['message'] . ')' : '');
        }
    }

    /**
     * For each case, whether PDO and the extension connect: the same answer from both, and a
     * refusal by the extension is an exception that names what to fix and never the password.
     * All cases run in one child process (configure() with new settings starts a new connection).
     *
     * @param array<string, array> $cases name => [database] keys over $this->config
     * @return array<string, bool> name => whether both connected
     */
    private function assertSameAsPdo(array $cases): array
    {
        $account = ['username' => 'archiver', 'password' => 'archiver-pw', 'enable_ssl' => '1'];
        $dbs = [];
        foreach ($cases as $name => $keys) {
            $dbs[$name] = $keys + $account + $this->config;
        }
        $r = $this->child(null, '
            $out = [];
            foreach (json_decode(' . var_export(json_encode($dbs), true) . ', true) as $name => $db) {
                try {
                    Matomo\ArchiveClaim\configure($db);
                    Matomo\ArchiveClaim\in_progress();
                    $out[$name] = true;
                } catch (Throwable $e) {
                    $out[$name] = ["exception" => get_class($e), "code" => $e->getCode(), "message" => $e->getMessage()];
                }
            }
            return $out;');
        foreach ($dbs as $name => $db) {
            $pdo = $this->pdoAccepts($db);
            $ours = $r[$name] ?? null;
            $this->assertSame($pdo === true, $ours === true, "$name: PDO " . json_encode($pdo) . ', extension ' . json_encode($ours));
            if ($ours !== true) {
                $this->assertContains($ours['exception'], [\Matomo\ArchiveClaim\ConnectionException::class,
                    \Matomo\ArchiveClaim\ConfigurationException::class], "$name: " . json_encode($ours));
                $this->assertMatchesRegularExpression('/ssl_|certificate|enable_ssl/', $ours['message'], $name);
                $this->assertStringNotContainsString('archiver-pw', $ours['message'], "$name: the password stays out");
            }
        }
        return array_map(fn ($ours) => $ours === true, $r);
    }

    public function testVersion1AndVersion3CertificatesAreAcceptedAndRefusedExactlyAsPdoDoes(): void
    {
        $client = ['ssl_cert' => self::path('client-v3.pem'), 'ssl_key' => self::path('client-v3-key.pem')];
        $trust = [
            'ssl_ca' => ['ssl_ca' => self::path('bundle.pem')],
            'ssl_ca_path' => ['ssl_ca_path' => self::path('cadir')],
            'ssl_ca and ssl_ca_path' => ['ssl_ca' => self::file('other-ca.pem'), 'ssl_ca_path' => self::path('cadir')],
            'another CA in ssl_ca' => ['ssl_ca' => self::file('other-ca.pem')],
            'ssl_ca_path without the CA' => ['ssl_ca_path' => self::path('otherdir')],
            'ssl_no_verify' => ['ssl_ca' => self::file('other-ca.pem'), 'ssl_no_verify' => '1'],
        ];
        $seen = [];
        try {
            foreach (['server-v1', 'server-v3', 'server-v1-by-v1ca', 'server-v3-cn-only', 'server-v1-other-name', 'server-v3-other-name'] as $server) {
                self::serve($server);
                $cases = [];
                foreach ($trust as $name => $keys) {
                    $cases["$server, $name"] = $keys + $client;
                }
                $seen += $this->assertSameAsPdo($cases);
            }
            self::serve('server-v1');
            $ca = ['ssl_ca' => self::path('bundle.pem')];
            $seen += $this->assertSameAsPdo([
                'no client certificate' => $ca,
                'client v1' => $ca + ['ssl_cert' => self::path('client-v1.pem'), 'ssl_key' => self::path('client-v1-key.pem')],
                'client v1 from a v1 CA' => $ca + ['ssl_cert' => self::path('client-by-v1ca.pem'), 'ssl_key' => self::path('client-by-v1ca-key.pem')],
                'client v3' => $ca + ['ssl_cert' => self::path('client-v3.pem'), 'ssl_key' => self::path('client-v3-key.pem')],
                'a key that is not the certificate\'s' => $ca + ['ssl_cert' => self::path('client-v1.pem'), 'ssl_key' => self::path('client-v3-key.pem')],
                'a client certificate from a CA the server does not trust' => $ca + ['ssl_cert' => self::path('client-by-other.pem'), 'ssl_key' => self::path('client-by-other-key.pem')],
            ]);
        } finally {
            self::serveOriginal();
        }
        // What the comparison found, so that it cannot pass by both sides failing everything.
        $expected = ['server-v1, ssl_ca' => true, 'server-v1, ssl_ca_path' => true, 'server-v3, ssl_ca' => true,
            'server-v1-by-v1ca, ssl_ca_path' => true, 'server-v1, another CA in ssl_ca' => false,
            'server-v1, ssl_ca_path without the CA' => false, 'server-v1, ssl_no_verify' => true,
            'server-v3-cn-only, ssl_ca' => false, 'server-v1-other-name, ssl_ca' => false,
            'server-v1-other-name, ssl_no_verify' => true, 'client v1' => true, 'client v1 from a v1 CA' => true,
            'no client certificate' => false, 'a client certificate from a CA the server does not trust' => false];
        $found = array_intersect_key($seen, $expected);
        ksort($expected);
        ksort($found);
        $this->assertSame($expected, $found);
    }

    public function testClaimHeartbeatReapAndReleaseRunThroughVersion1CertificatesAndACaDirectory(): void
    {
        [$mine, $orphan] = [$this->queued(1), $this->queued(2)];
        $gone = (int) shell_exec(escapeshellarg(PHP_BINARY) . ' -n -r "echo getmypid();"');
        $this->pdo->prepare("UPDATE matomo_archive_invalidations SET status = 1, processing_host = ?, process_id = ?,
            ts_started = NOW() WHERE idinvalidation = ?")->execute([gethostname(), (string) $gone, $orphan]);
        try {
            self::serve('server-v1');
            $db = ['username' => 'archiver', 'password' => 'archiver-pw', 'enable_ssl' => '1', 'ssl_ca_path' => self::path('cadir'),
                'ssl_cert' => self::path('client-v1.pem'), 'ssl_key' => self::path('client-v1-key.pem')] + $this->config;
            $this->assertTrue($this->pdoAccepts($db), 'PDO connects with these files');
            $r = $this->child($db, '
                $claimed = Matomo\ArchiveClaim\claim_invalidation(' . $mine . ');
                $registration = Matomo\ArchiveClaim\register_process();
                $report = Matomo\ArchiveClaim\reap_orphans();
                return ["claimed" => $claimed, "heartbeat_error" => $registration["last_error"], "beats" => $registration["beats"],
                    "actions" => array_column($report["rows"], "action", "idinvalidation")];');
        } finally {
            self::serveOriginal();
        }
        $this->assertTrue($r['claimed'] ?? null, json_encode($r));
        $this->assertNull($r['heartbeat_error'], 'the heartbeat thread connected through TLS');
        $this->assertSame([$mine => 'kept', $orphan => 'reset'], $r['actions']);
        $this->assertSame(0, $this->status($orphan));
        $this->assertSame(0, $this->status($mine), 'released through TLS when the request ended');
    }

    public function testSslCipherIsTakenAsPdoTakesItAndAServerOfferingNoneOfItIsAClearFailure(): void
    {
        // A server that speaks TLS 1.2 only, where the cipher list decides (TLS 1.3 suites are
        // not governed by ssl_cipher, for PDO as for us).
        [$server, $pipes, $env] = self::startServer(['MATOMO_ARCHIVE_CLAIM_TEST_DB_TLS_VERSION' => 'TLSv1.2']);
        try {
            $dsn = parse_url($env['MATOMO_ARCHIVE_CLAIM_TEST_DSN']);
            $root = self::root(null, $env);
            $root->exec("CREATE DATABASE mac_cipher");
            self::root('mac_cipher', $env)->exec(sprintf(TestDatabase::INVALIDATIONS_DDL, 'matomo_'));
            $db = ['host' => '127.0.0.1', 'port' => (string) $dsn['port'], 'username' => rawurldecode($dsn['user']),
                'password' => rawurldecode($dsn['pass']), 'dbname' => 'mac_cipher', 'tables_prefix' => 'matomo_', 'enable_ssl' => '1',
                'ssl_ca' => $env['MATOMO_ARCHIVE_CLAIM_TEST_TLS_DIR'] . '/ca.pem'];
            // The server's certificate is an EC key: RSA-authenticated suites cannot be agreed.
            $cases = [
                'an ECDSA suite' => ['ssl_cipher' => 'ECDHE-ECDSA-AES256-GCM-SHA384'],
                'several, one of them usable' => ['ssl_cipher' => 'ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256'],
                'only RSA suites' => ['ssl_cipher' => 'ECDHE-RSA-AES128-GCM-SHA256:AES256-SHA'],
                'no cipher OpenSSL knows' => ['ssl_cipher' => 'NO-SUCH-CIPHER'],
            ];
            $code = '$out = []; foreach (json_decode($argv[2], true) as $name => $db) {
                try { Matomo\ArchiveClaim\configure($db); Matomo\ArchiveClaim\in_progress(); $out[$name] = true; }
                catch (Throwable $e) { $out[$name] = ["exception" => get_class($e), "code" => $e->getCode(), "message" => $e->getMessage()]; } }
                echo "\n", json_encode($out);';
            $all = [];
            foreach ($cases as $name => $keys) {
                $all[$name] = $keys + $db;
            }
            $proc = proc_open(TestDatabase::php(['-d', 'matomo_archive_claim.auto_reap=0', '-r', $code, '--', '', json_encode($all)]),
                [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $p);
            $out = stream_get_contents($p[1]) . stream_get_contents($p[2]);
            proc_close($proc);
            $lines = explode("\n", trim($out));
            $ours = json_decode(end($lines), true);
            $this->assertIsArray($ours, $out);
            foreach ($all as $name => $keys) {
                $pdo = $this->pdoAccepts($keys);
                $this->assertSame($pdo === true, ($ours[$name] ?? null) === true, "$name: PDO " . json_encode($pdo) . ', extension ' . json_encode($ours[$name] ?? null));
            }
            $this->assertTrue($ours['an ECDSA suite'], 'a suite the server offers is used');
            $this->assertSame(\Matomo\ArchiveClaim\ConnectionException::class, $ours['only RSA suites']['exception'] ?? null, json_encode($ours));
            $this->assertSame(2026, $ours['only RSA suites']['code']);
            $this->assertStringContainsString("the server accepts none of the ciphers in ssl_cipher ('ECDHE-RSA-AES128-GCM-SHA256:AES256-SHA')", $ours['only RSA suites']['message']);
            $this->assertSame(\Matomo\ArchiveClaim\ConfigurationException::class, $ours['no cipher OpenSSL knows']['exception'] ?? null);
            $this->assertStringContainsString("ssl_cipher 'NO-SUCH-CIPHER'", $ours['no cipher OpenSSL knows']['message']);
        } finally {
            self::stopServer($server, $pipes);
        }
    }
}
